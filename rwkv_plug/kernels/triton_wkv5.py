"""The ``triton`` kernel: chunked wkv5 forward and backward in Triton.

One program per (batch row, head) walks the sequence in chunks of ``BT``
tokens, keeping the ``N x N`` state (fp32, or fp64 for fp64 inputs) in
registers. Per chunk the state part is three matrix products, which run on
tensor cores on Ampere/Hopper::

    y     = (r * w^t) S + A v              A[t, s] = sum_k r_t k_s w^(t-1-s), s < t
    S'    = w^L * S + (k * w^(L-1-s))^T v

``A`` is built from an ``(BT, BT, N)`` product with ``w^(t-1-s)`` computed
exactly (exponent never negative), so fast decays cannot overflow. The
backward is two more passes: a forward scan for ``dr`` and a reverse scan
carrying the state gradient (started from ``dsT``) for ``dk``, ``dv`` and
``ds0``. The bonus term and ``dw`` are handled in :mod:`.common`.

Triton is imported only when a kernel is first used. Under
``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (tiny shapes,
fp32/fp64: the interpreter gets bf16 wrong).
"""

from __future__ import annotations

import importlib.util

import torch

from rwkv_plug.core.interfaces import Kernel, KernelCaps
from rwkv_plug.kernels.common import fused_wkv5

BT = 16  # tokens per chunk (tl.dot needs >= 16)
NUM_WARPS = 8  # the (BT, BT, N) decay products need the registers


def _kernels():
    """The jitted kernels; importing triton is slow, so only on first use."""
    from rwkv_plug.kernels import triton_impl

    return triton_impl


class TritonBackend:
    """The state part of wkv5 and its backward, on Triton kernels."""

    def _meta(self, r: torch.Tensor) -> dict:
        B, T, H, N = r.shape
        is64 = r.dtype == torch.float64
        prec = "ieee" if r.dtype in (torch.float32, torch.float64) else "tf32"
        return dict(T=T, H=H, N=N, BT=BT, IS64=is64, PREC=prec)

    def forward(self, r, k, v, lw, s0):
        B, T, H, N = r.shape
        y = torch.empty(r.shape, dtype=s0.dtype, device=r.device)
        sT = torch.empty_like(s0)
        _kernels()._fwd[(B * H,)](r, k, v, lw, s0, y, sT, **self._meta(r), num_warps=NUM_WARPS)
        return y, sT

    def backward(self, r, k, v, lw, s0, dy, dsT):
        B, T, H, N = r.shape
        meta = self._meta(r)
        dr = torch.empty(r.shape, dtype=s0.dtype, device=r.device)
        dk, dv, ds0 = torch.empty_like(dr), torch.empty_like(dr), torch.empty_like(s0)
        kern = _kernels()
        kern._bwd_dr[(B * H,)](r, k, v, lw, s0, dy, dr, **meta, num_warps=NUM_WARPS)
        kern._bwd_rev[(B * H,)](r, k, v, lw, dy, dsT, dk, dv, ds0, **meta, num_warps=NUM_WARPS)
        return dr, dk, dv, ds0


class TritonKernel(Kernel):
    """Chunked Triton wkv5 with state in/out and state gradient (Ampere/Hopper)."""

    name = "triton"
    caps = KernelCaps(
        dtypes=("float32", "float64", "bfloat16", "float16"),
        devices=("cuda",),
        chunk_multiple=1,
        speed_rank=20,
    )
    chunk_size = BT

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            if importlib.util.find_spec("triton") is None:
                return False, "triton is not installed (pip install 'rwkv-plug[triton]')"
            if torch.cuda.is_available() or _interpreting():
                return True, ""
            return False, "no CUDA device (set TRITON_INTERPRET=1 to run it on CPU, slowly)"
        except Exception as exc:  # availability must never raise
            return False, f"triton check failed: {exc}"

    @classmethod
    def runs_on(cls, device_type: str) -> bool:
        """CUDA; CPU too under Triton's interpreter (explicit selection only)."""
        return device_type == "cuda" or (device_type == "cpu" and _interpreting())

    def wkv5(self, r, k, v, w, u, s0):
        return fused_wkv5(TritonBackend(), r, k, v, w, u, s0)


def _interpreting() -> bool:
    from rwkv_plug.core.env import settings

    return settings().triton_interpret
