"""The ``torch`` kernel: pure PyTorch, exact for any decay, the default on CPU."""

from __future__ import annotations

import torch

from rwkv_plug.core.interfaces import Kernel, KernelCaps
from rwkv_plug.kernels.wkv5.torch_chunked import CHUNK, wkv5_chunked
from rwkv_plug.kernels.wkv7.reference import check_shapes as check_wkv7, wkv7_recurrent


class TorchKernel(Kernel):
    """Chunked pure-PyTorch WKV (exact for any decay); the default on CPU."""

    name = "torch"
    caps = KernelCaps(
        dtypes=("float32", "float64", "bfloat16", "float16"),
        devices=("cpu", "cuda", "mps"),
        speed_rank=0,
        ops=("wkv5", "wkv7"),
    )
    #: Internal chunk length (any T works; the conformance suite tests a ragged T).
    chunk_size = CHUNK

    def wkv5(self, r, k, v, w, u, s0):
        return wkv5_chunked(r, k, v, w, u, s0, self.chunk_size)

    def wkv7(self, r, w, k, v, a, b, s0):
        # placeholder until the chunked wkv7 form lands: the per-step reference
        check_wkv7(r, w, k, v, a, b, s0)
        with torch.autocast(device_type=r.device.type, enabled=False):
            return wkv7_recurrent(r, w, k, v, a, b, s0)
