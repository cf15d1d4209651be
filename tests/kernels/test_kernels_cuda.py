"""The cuda kernel compiles with nvcc (no GPU needed) and reports why it is unavailable."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from rwkv_plug.kernels.backend_cuda import CudaKernel
from rwkv_plug.kernels.wkv5.cuda import SOURCES, nvcc_flags

NVCC = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
# What torch.utils.cpp_extension adds to every nvcc call.
TORCH_NVCC_DEFINES = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                      "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                      "--expt-relaxed-constexpr", "-std=c++17"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wkv5_cu_compiles_for_ampere_and_hopper(tmp_path, dtype):
    if not shutil.which(NVCC):
        pytest.skip("nvcc is not installed here (CI has it); cannot compile-check wkv5.cu")
    out = tmp_path / "wkv5.o"
    cmd = [NVCC, "-c", str(SOURCES / "wkv5.cu"), "-o", str(out),
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           *nvcc_flags(64, dtype), *TORCH_NVCC_DEFINES]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "warning" not in res.stderr.lower(), res.stderr[-3000:]
    assert out.stat().st_size > 0
    # Both launchers are exported with C linkage for the binding.
    syms = subprocess.run(["nm", str(out)], capture_output=True, text=True).stdout
    assert " T wkv5_forward" in syms and " T wkv5_backward" in syms


def test_cuda_kernel_availability_gives_a_reason():
    ok, reason = CudaKernel.availability()
    if not torch.cuda.is_available():
        assert not ok and "CUDA" in reason
    else:  # only the build tools can be missing on a GPU machine
        assert ok or "nvcc" in reason or "ninja" in reason
