"""The ``torch`` kernel: pure PyTorch, exact for any decay, the default on CPU."""

from __future__ import annotations

from rwkv_plug.core.interfaces import Kernel, KernelCaps
from rwkv_plug.kernels.wkv5.torch_chunked import CHUNK, wkv5_chunked
from rwkv_plug.kernels.wkv7.torch_chunked import wkv7_chunked


class TorchKernel(Kernel):
    """Chunked pure-PyTorch wkv5 and wkv7 (exact for any decay); the default on CPU."""

    name = "torch"
    caps = KernelCaps(
        dtypes=("float32", "float64", "bfloat16", "float16"),
        devices=("cpu", "cuda", "mps"),
        speed_rank=0,
        ops=("wkv5", "wkv7"),
        resets=True,
    )
    #: Internal chunk length (any T works; the conformance suite tests a ragged T); state resets
    #: go on multiples of it (wkv7's chunk, 16, divides it).
    chunk_size = CHUNK

    def wkv5(self, r, k, v, w, u, s0, resets=None, s_reset=None):
        return wkv5_chunked(r, k, v, w, u, s0, self.chunk_size, self.precision, resets, s_reset)

    def wkv7(self, r, w, k, v, a, b, s0, resets=None, s_reset=None):
        return wkv7_chunked(r, w, k, v, a, b, s0, precision=self.precision, resets=resets, s_reset=s_reset)
