"""wkv5 for the ``cuda`` kernel: ``cuda/wkv5.cu`` + ``cuda/wkv5_op.cpp``, built on first use.

The extension is compiled by ``torch.utils.cpp_extension.load`` the first
time a (head size, input dtype) pair is used, into
``<RWKV_PLUG_CACHE>/cuda/<name>``, and reused from there afterwards (torch
rebuilds only when a source changed). Nothing is compiled at import.

The kernels are the per-timestep recurrence, one block per (batch row,
head) and one thread per state column or row, with the batch offset the
earlier trainer's kernel lacked and a state gradient. All passes are one
templated ``line_scan`` kernel (``wkv5.cu`` has the math and the table of
what each pass feeds it): forward is one pass; backward is three (``dr``
forward from ``s0``, ``dk`` + ``ds0`` and ``dv`` in reverse from ``dsT``).
Arithmetic is scalar fp32 (fp64 for fp64 inputs), so ``model.wkv_precision``
has nothing to choose here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rwkv_plug.core.errors import KernelError

SOURCES = Path(__file__).with_name("cuda")
_IN_TYPES = {
    torch.float32: ("f32", "float"),
    torch.float64: ("f64", "double"),
    torch.bfloat16: ("bf16", "__nv_bfloat16"),
    torch.float16: ("f16", "__half"),
}
_modules: dict[tuple[int, torch.dtype], object] = {}


def nvcc_flags(head_size: int, dtype: torch.dtype) -> list[str]:
    """The nvcc flags for one configuration (also used by the compile test)."""
    return ["-O3", "-Xptxas", "-O3", "-res-usage", f"-DWKV_N={head_size}",
            f"-DWKV_IN={_IN_TYPES[dtype][1]}"]


def load_extension(head_size: int, dtype: torch.dtype):
    """Build (or reuse the cached build of) the extension for this configuration."""
    key = (head_size, dtype)
    if key in _modules:
        return _modules[key]
    if dtype not in _IN_TYPES:
        raise KernelError(f"cuda kernel: unsupported dtype {dtype}")
    from torch.utils.cpp_extension import load

    from rwkv_plug.core.env import settings

    name = f"rwkv_plug_wkv5_n{head_size}_{_IN_TYPES[dtype][0]}"
    build_dir = settings().cache_dir / "cuda" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        module = load(
            name=name,
            sources=[str(SOURCES / "wkv5_op.cpp"), str(SOURCES / "wkv5.cu")],
            extra_cflags=["-O3", f"-DWKV_N={head_size}"],
            extra_cuda_cflags=nvcc_flags(head_size, dtype),
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as exc:
        raise KernelError(
            f"building the cuda wkv5 kernel ({name}) failed: {exc}. "
            f"Build files are in {build_dir}; use kernel: triton or torch meanwhile."
        ) from exc
    _modules[key] = module
    return module


class CudaBackend:
    """The state part of wkv5 and its backward, on the compiled extension."""

    def _ext(self, r: torch.Tensor):
        return load_extension(r.shape[-1], r.dtype)

    def forward(self, r, k, v, lw, s0):
        ext = self._ext(r)
        with torch.cuda.device(r.device):  # launch on the tensors' GPU
            stream = torch.cuda.current_stream(r.device).cuda_stream
            return tuple(ext.forward(r, k, v, lw, s0, stream))

    def backward(self, r, k, v, lw, s0, dy, dsT):
        ext = self._ext(r)
        with torch.cuda.device(r.device):
            stream = torch.cuda.current_stream(r.device).cuda_stream
            return tuple(ext.backward(r, k, v, lw, s0, dy, dsT, stream))
