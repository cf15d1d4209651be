"""wkv7 for the ``triton`` kernel: a sequential scan with the state in registers.

Each program owns ``BV`` (forward) or ``BV_BWD`` (backward) value rows of one (batch row, head)'s ``N x N``
state (fp32, or fp64 for fp64 inputs) and walks the tokens one at a time,
exactly the per-step recurrence of :mod:`.reference`; the rows evolve
independently, so ``B * H * N / BV`` programs run in parallel. The forward
saves the state every ``CH`` tokens. The backward walks the segments in
reverse: it recomputes a segment's states from its snapshot into a small
per-program buffer, then runs the reverse recurrence of the state gradient
(started from ``dsT``) through them, writing every input gradient directly
(``dw`` included: no division by ``w``, so it stays exact for tiny decays).
Memory beyond the inputs: ``T / CH`` states per (row, head).

This is the simple, obviously-correct design; it is not tensor-core
chunked like the wkv5 Triton kernel. Triton is imported only when the
kernel is first used; under ``TRITON_INTERPRET=1`` the same kernels run on
CPU tensors (tiny shapes, fp32/fp64).
"""

from __future__ import annotations

import contextlib

import torch

from rwkv_plug.core.errors import KernelError
from rwkv_plug.kernels.precision import compute_dtype
from rwkv_plug.kernels.wkv7.reference import check_shapes

CH = 16  # tokens between state snapshots
BV = 32  # state rows per program in the forward
BV_BWD = 16  # and in the backward, which holds three state tiles (no spills on sm_80)
NUM_WARPS = 4


def _kernels():
    """The jitted kernels; importing triton is slow, so only on first use."""
    from rwkv_plug.kernels.wkv7 import triton_impl

    return triton_impl


def _meta(r: torch.Tensor, bv: int) -> dict:
    N = r.shape[-1]
    if N < 16 or N & (N - 1):
        raise KernelError(f"triton wkv7 needs a power-of-two head size >= 16, got {N}")
    return dict(H=r.shape[2], N=N, BV=min(bv, N), CH=CH, IS64=r.dtype == torch.float64,
                num_warps=NUM_WARPS)


def _on_device(x: torch.Tensor):
    """Launch on the tensor's GPU (triton uses the current device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


class _Wkv7(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, s0):
        B, T, H, N = r.shape
        meta = _meta(r, BV)
        cdt = compute_dtype(r.dtype)
        s0c = s0.to(cdt).contiguous()
        y = torch.empty(r.shape, dtype=cdt, device=r.device)
        sT = torch.empty_like(s0c)
        snaps = torch.empty(B * H, -(-T // CH), N, N, dtype=cdt, device=r.device)
        with _on_device(r):
            _kernels()._fwd[(B * H, N // meta["BV"])](r, w, k, v, a, b, s0c, y, sT, snaps, T,
                                                      **meta)
        ctx.save_for_backward(r, w, k, v, a, b, snaps)
        ctx.s0_dtype = s0.dtype
        return y.to(r.dtype), sT

    @staticmethod
    def backward(ctx, dy, dsT):
        r, w, k, v, a, b, snaps = ctx.saved_tensors
        B, T, H, N = r.shape
        meta = _meta(r, BV_BWD)
        cdt = snaps.dtype
        dy = r.new_zeros(r.shape, dtype=cdt) if dy is None else dy.to(cdt).contiguous()
        dsT = snaps.new_zeros(B, H, N, N) if dsT is None else dsT.to(cdt).contiguous()
        nvb = N // meta["BV"]
        parts = [torch.empty(nvb, B, T, H, N, dtype=cdt, device=r.device) for _ in range(5)]
        dv = torch.empty(r.shape, dtype=cdt, device=r.device)
        ds0 = torch.empty_like(dsT)
        work = torch.empty(B * H * nvb, CH, meta["BV"], N, dtype=cdt, device=r.device)
        with _on_device(r):
            _kernels()._bwd[(B * H, nvb)](r, w, k, v, a, b, snaps, dy, dsT, work, *parts[:3], dv,
                                          *parts[3:], ds0, T, B * T * H * N, **meta)
        dr, dw, dk, da, db = (p.sum(0) for p in parts)
        return (dr.to(r.dtype), dw.to(w.dtype), dk.to(k.dtype), dv.to(v.dtype), da.to(a.dtype),
                db.to(b.dtype), ds0.to(ctx.s0_dtype))


def triton_wkv7(r, w, k, v, a, b, s0):
    """wkv7 on the Triton kernels; ``y`` in ``r``'s dtype, ``sT`` in the compute dtype."""
    check_shapes(r, w, k, v, a, b, s0)
    if r.shape[1] == 0:
        return r.new_zeros(r.shape), s0.to(compute_dtype(r.dtype))
    r, w, k, v, a, b = (x.contiguous() for x in (r, w, k, v, a, b))
    return _Wkv7.apply(r, w, k, v, a, b, s0)
