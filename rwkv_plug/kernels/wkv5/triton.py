"""wkv5 for the ``triton`` kernel: chunked forward and backward in Triton.

Each program walks one (batch row, head) through the sequence in chunks of
``BT`` tokens, keeping a slice of the ``N x N`` state in registers (fp32, or
fp64 for fp64 inputs): ``BV`` value columns in the forward and ``dv`` passes,
``BK`` key rows in the ``dr`` and ``dk`` passes, since those slices evolve
independently. Per chunk the state part is three matrix products (``tl.dot``),
on TF32 tensor cores or in IEEE fp32 as ``model.wkv_precision`` says
(:class:`TritonBackend`)::

    y     = (r * w^t) S + A v              A[t, s] = sum_k r_t k_s w^(t-1-s), s < t
    S'    = w^L * S + (k * w^(L-1-s))^T v

``A`` is summed over key blocks of ``(BT, BT, 16)`` products with
``w^(t-1-s)`` computed exactly (exponent never negative), so fast decays
cannot overflow. The backward is three passes: a forward scan for ``dr``,
and two reverse scans of the state gradient (started from ``dsT``), one
for ``dk`` and ``ds0`` and one for ``dv``. The bonus term and ``dw`` are
handled in :mod:`.fused`.

Triton is imported only when a kernel is first used. Under
``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (tiny shapes,
fp32/fp64: the interpreter gets bf16 wrong).
"""

from __future__ import annotations

import contextlib

import torch

from rwkv_plug.core.errors import KernelError
from rwkv_plug.kernels.precision import uses_tf32

BT = 16  # tokens per chunk (tl.dot needs >= 16)
BV = 32  # state columns per program (forward, dv)
BK = 16  # state rows per program (dr, dk); also the key block of the A products
NUM_WARPS = 4


def _kernels():
    """The jitted kernels; importing triton is slow, so only on first use."""
    from rwkv_plug.kernels.wkv5 import triton_impl

    return triton_impl


class TritonBackend:
    """The state part of wkv5 and its backward, on Triton kernels.

    ``precision`` (``model.wkv_precision``) picks the ``tl.dot`` input
    precision of the fp32 products: ``"ieee"`` (exact fp32) or ``"tf32"``;
    see :mod:`rwkv_plug.kernels.precision`. fp64 dots are fp64.
    """

    def __init__(self, precision: str = "auto") -> None:
        self.precision = precision

    def _meta(self, r: torch.Tensor) -> dict:
        B, T, H, N = r.shape
        if N < 16 or N & (N - 1):
            raise KernelError(f"triton wkv5 needs a power-of-two head size >= 16, got {N}")
        is64 = r.dtype == torch.float64
        prec = "tf32" if uses_tf32(self.precision, r.dtype) else "ieee"
        return dict(T=T, H=H, N=N, BT=BT, IS64=is64, PREC=prec, num_warps=NUM_WARPS)

    def forward(self, r, k, v, lw, s0):
        B, T, H, N = r.shape
        meta = self._meta(r)
        y = torch.empty(r.shape, dtype=s0.dtype, device=r.device)
        sT = torch.empty_like(s0)
        bv = min(BV, N)
        with _on_device(r):
            _kernels()._fwd[(B * H, N // bv)](r, k, v, lw, s0, y, sT, BV=bv, BK=16, **meta)
        return y, sT

    def backward(self, r, k, v, lw, s0, dy, dsT):
        B, T, H, N = r.shape
        meta = self._meta(r)
        dr = torch.empty(r.shape, dtype=s0.dtype, device=r.device)
        dk, dv, ds0 = torch.empty_like(dr), torch.empty_like(dr), torch.empty_like(s0)
        kern = _kernels()
        bv, bk = min(BV, N), min(BK, N)
        with _on_device(r):
            kern._bwd_dr[(B * H, N // bk)](k, v, lw, s0, dy, dr, BK=bk, **meta)
            kern._bwd_dk[(B * H, N // bk)](r, v, lw, dy, dsT, dk, ds0, BK=bk, **meta)
            kern._bwd_dv[(B * H, N // bv)](r, k, lw, dy, dsT, dv, BV=bv, BK=16, **meta)
        return dr, dk, dv, ds0


def _on_device(x: torch.Tensor):
    """Launch on the tensor's GPU (triton uses the current device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
