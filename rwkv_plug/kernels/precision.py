"""The precision a kernel computes in: dtype, and how fp32 products are done.

``model.wkv_precision`` chooses how the WKV op's fp32 matrix products run:

* ``fp32``: exact IEEE fp32 products (the torch kernel runs its matmuls at
  ``torch.set_float32_matmul_precision("highest")``, Triton ``tl.dot`` with
  ``input_precision="ieee"``);
* ``tf32``: TF32 tensor-core products (10-bit mantissa inputs, fp32
  accumulation) where the hardware has them (NVIDIA Ampere and later): the
  torch kernel at ``"high"``, Triton with ``input_precision="tf32"``;
* ``auto`` (default): ``tf32`` for bf16/fp16 inputs, whose own rounding is
  coarser than TF32's, and ``fp32`` for fp32 inputs.

fp64 inputs compute in fp64 whatever the setting. The state and every
accumulation stay fp32 (fp64) in all three.
"""

from __future__ import annotations

import contextlib

import torch

#: The values ``model.wkv_precision`` accepts.
WKV_PRECISIONS = ("auto", "fp32", "tf32")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else (fp32, bf16, fp16) computes in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def uses_tf32(precision: str, dtype: torch.dtype) -> bool:
    """Whether fp32 products of inputs in ``dtype`` run in TF32 under ``precision``."""
    if precision not in WKV_PRECISIONS:
        raise ValueError(f"wkv precision must be one of {', '.join(WKV_PRECISIONS)}, got {precision!r}")
    if dtype == torch.float64:
        return False
    if precision == "auto":
        return dtype in (torch.bfloat16, torch.float16)
    return precision == "tf32"


@contextlib.contextmanager
def float32_matmuls(tf32: bool):
    """Run torch's fp32 matmuls inside at ``"high"`` (TF32) or ``"highest"`` (IEEE fp32).

    Sets torch's process-wide setting for the block and restores the caller's
    afterwards, so ``model.torch_set_float32_matmul_precision`` still governs
    every other matmul of the model.
    """
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class _MatMul(torch.autograd.Function):
    """``a @ b`` at a chosen fp32 precision, its backward at the same one."""

    @staticmethod
    def forward(ctx, a, b, tf32: bool):
        ctx.save_for_backward(a, b)
        ctx.tf32 = tf32
        with float32_matmuls(tf32):
            return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        da = _MatMul.apply(g, b.transpose(-1, -2), ctx.tf32) if ctx.needs_input_grad[0] else None
        db = _MatMul.apply(a.transpose(-1, -2), g, ctx.tf32) if ctx.needs_input_grad[1] else None
        return da, db, None


def matmul(a: torch.Tensor, b: torch.Tensor, tf32: bool) -> torch.Tensor:
    """``a @ b`` (same batch shape, no broadcasting) with forward and backward in TF32 or IEEE fp32.

    The backward runs when the caller's ``loss.backward()`` does, outside any
    block the forward ran in, so the precision travels with the product.
    """
    if a.dtype == torch.float64:
        return a @ b  # fp64 has one precision
    return _MatMul.apply(a, b, tf32)
