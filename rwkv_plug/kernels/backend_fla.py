"""The ``fla`` kernel: wkv7 by flash-linear-attention's ``chunk_rwkv7`` (optional extra).

``pip install 'rwkv-plug[fla]'`` installs flash-linear-attention, the field's
maintained Triton library; its chunked RWKV-7 op takes an initial state,
returns the final state and differentiates through both. This plugin only
maps our ``wkv7`` contract onto its conventions:

* fla keeps the state as ``[k, v]`` (keys are rows), the transpose of ours
  (``[v, k]``, the official layout): ``s0`` goes in transposed and ``sT``
  comes back transposed;
* fla takes the decay in log space (``w`` there is ``log w`` here) and
  scales ``r`` by ``scale``: we pass ``scale=1.0``;
* its ``a`` and ``b`` are ours: ``S_t = S (diag(w_t) + a_t b_t^T) + v_t k_t^T``
  in our layout is ``S' = (diag(w_t) + b_t a_t^T) S' + k_t v_t^T`` in fla's.

It implements only wkv7, needs CUDA, and computes in fla's own precision
(fp32 accumulation; the decay and the state are passed in fp32).
"""

from __future__ import annotations

import importlib.util

import torch

from rwkv_plug.core.interfaces import Kernel, KernelCaps
from rwkv_plug.kernels.precision import compute_dtype
from rwkv_plug.kernels.wkv7.reference import check_shapes


def _chunk_rwkv7():
    """fla's op; importing fla is slow and needs its dependencies, so only on first use."""
    from fla.ops.rwkv7 import chunk_rwkv7

    return chunk_rwkv7


class FlaKernel(Kernel):
    """wkv7 only, by flash-linear-attention's chunk_rwkv7 (CUDA; extra 'fla')."""

    name = "fla"
    caps = KernelCaps(
        dtypes=("float32", "bfloat16", "float16"),
        devices=("cuda",),
        speed_rank=25,
        ops=("wkv7",),
    )
    chunk_size = 16

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            if importlib.util.find_spec("fla") is None:
                return False, "flash-linear-attention is not installed: pip install 'rwkv-plug[fla]'"
            if not torch.cuda.is_available():
                return False, "no CUDA device (flash-linear-attention's kernels need one)"
            return True, ""
        except Exception as exc:  # availability must never raise
            return False, f"fla check failed: {exc}"

    def wkv7(self, r, w, k, v, a, b, s0):
        check_shapes(r, w, k, v, a, b, s0)
        cdt = compute_dtype(r.dtype)
        dt = r.dtype
        r, k, v, a, b = (x.to(dt).contiguous() for x in (r, k, v, a, b))
        o, sT = _chunk_rwkv7()(
            r, torch.log(w.to(cdt)).contiguous(), k, v, a, b,
            scale=1.0,
            initial_state=s0.to(cdt).transpose(-1, -2).contiguous(),  # [v, k] -> fla's [k, v]
            output_final_state=True,
        )
        return o.to(r.dtype), sT.to(cdt).transpose(-1, -2)  # back to [v, k]
