"""The ``cuda`` kernel: compiled CUDA extensions, built on first use."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch

from rwkv_plug.core.interfaces import Kernel, KernelCaps
from rwkv_plug.kernels.wkv5.cuda import CudaBackend
from rwkv_plug.kernels.wkv5.fused import fused_wkv5


class CudaKernel(Kernel):
    """CUDA wkv5 extension (built on first use) with state gradient and B>1."""

    name = "cuda"
    caps = KernelCaps(
        dtypes=("float32", "float64", "bfloat16", "float16"),
        devices=("cuda",),
        speed_rank=10,
        ops=("wkv5",),
    )
    chunk_size = 1

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            if torch.version.cuda is None:
                return False, "this torch build has no CUDA support"
            if not torch.cuda.is_available():
                return False, "no CUDA device"
            if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
                return False, "nvcc not found (install the CUDA toolkit to build the kernel)"
            if importlib.util.find_spec("ninja") is None and shutil.which("ninja") is None:
                return False, "ninja not found (pip install 'rwkv-plug[cuda]')"
            return True, ""
        except Exception as exc:  # availability must never raise
            return False, f"cuda check failed: {exc}"

    def wkv5(self, r, k, v, w, u, s0):
        return fused_wkv5(CudaBackend(), r, k, v, w, u, s0)
