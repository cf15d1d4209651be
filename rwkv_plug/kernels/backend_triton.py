"""The ``triton`` kernel: Triton wkv5 (chunked) and wkv7 (scan), state in/out and gradient.

Triton is imported only when a kernel is first used. Under
``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (tiny shapes,
fp32/fp64: the interpreter gets bf16 wrong).
"""

from __future__ import annotations

import importlib.util

import torch

from rwkv_plug.core.interfaces import Kernel, KernelCaps
from rwkv_plug.kernels.wkv5.fused import fused_wkv5
from rwkv_plug.kernels.wkv5.triton import BT, TritonBackend


class TritonKernel(Kernel):
    """Triton wkv5 (chunked) and wkv7 (scan), state in/out and state gradient (Ampere/Hopper)."""

    name = "triton"
    caps = KernelCaps(
        dtypes=("float32", "float64", "bfloat16", "float16"),
        devices=("cuda",),
        speed_rank=20,
        ops=("wkv5", "wkv7"),
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
        return fused_wkv5(TritonBackend(self.precision), r, k, v, w, u, s0)

    def wkv7(self, r, w, k, v, a, b, s0):
        from rwkv_plug.kernels.wkv7.triton import triton_wkv7

        return triton_wkv7(r, w, k, v, a, b, s0)


def _interpreting() -> bool:
    from rwkv_plug.core.env import settings

    return settings().triton_interpret
