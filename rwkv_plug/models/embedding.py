"""The token embedding, whose CPU gradient reuses its memory from step to step.

``nn.Embedding``'s backward builds a fresh dense (V, C) zero tensor every step and
adds the used rows into it; on a CPU the fresh allocation costs far more than the
rows (see :mod:`rwkv_plug.models.grad_pool`). :class:`Embedding` takes the tensor
from :func:`~rwkv_plug.models.grad_pool.grad_buffer` instead: dense, fully zeroed,
then filled with the used rows, so the gradient equals ``nn.Embedding``'s in every
case: gradient accumulation, DDP's all-reduce, clipping, weight decay. (Zeroing only
the rows used last time was measured too, ~0.1 ms instead of ~8, but DDP's all-reduce
and in-place gradient edits write other rows, so it would not be exact.)

On CUDA (whose caching allocator already reuses memory), for frozen weights and for
nn.Embedding options (padding_idx, max_norm, ...) it is ``nn.Embedding`` unchanged.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rwkv_plug.models.grad_pool import grad_buffer


class _PooledEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx: Tensor, weight: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(idx)
        ctx.weight = weakref.ref(weight)
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # noqa: D102
        (idx,) = ctx.saved_tensors
        weight = ctx.weight()
        C = grad_out.shape[-1]
        buf = grad_buffer(weight)
        buf.index_add_(0, idx.reshape(-1), grad_out.reshape(-1, C).to(buf.dtype))
        # a new tensor on the same memory: autograd may keep it as .grad without a copy
        return None, buf.detach()


class Embedding(nn.Embedding):
    """``nn.Embedding`` (same parameters and state dict) with a reused gradient buffer on CPU."""

    def forward(self, idx: Tensor) -> Tensor:  # noqa: D102
        w = self.weight
        plain = (self.padding_idx is not None or self.max_norm is not None or self.scale_grad_by_freq
                 or self.sparse or w.device.type != "cpu" or not (w.requires_grad and torch.is_grad_enabled()))
        if plain:
            return super().forward(idx)
        return _PooledEmbedding.apply(idx, w)
