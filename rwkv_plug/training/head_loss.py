"""The head and the loss in token chunks: the (T, V) logits are never held at once.

``ln_out(x) @ head.weight^T`` is computed for ``chunk`` tokens at a time, and
each chunk's masked cross-entropy, its L2Wrap pull (:func:`~rwkv_plug.training.loss.top_logit_pull`)
and right away its gradients with respect to the head input and the head
weight; backward only scales the stored gradients by the scalar arriving at
the loss. The idea is the "fused linear cross-entropy" of the Liger-Kernel
project (linkedin/Liger-Kernel), and the official RWKV trainer's head chunking;
this is a fresh CPU/GPU-agnostic torch version of it.

The gradient of ``sum(CE * mask) / denom`` with respect to a row's logits is
``(softmax - onehot(target)) * mask / denom``; the pull adds
``strength * top * mask`` at the row's largest logit (the index ``max`` picks,
as autograd does for ``logits.max(-1)``). The values equal those of
:func:`~rwkv_plug.training.loss.chunk_loss` on the full logits up to rounding
(tests/training/test_head_loss.py checks fp64 and fp32).

Low-precision runs (bf16/fp16 weights, or autocast) multiply in that precision and
do the softmax and cross-entropy in fp32, as :func:`chunk_loss` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rwkv_plug.models.grad_pool import grad_buffer
from rwkv_plug.training.loss import TOP_LOGIT_PULL, chunk_loss

#: Tokens per head chunk by default (``model.head_chunk_tokens``); see docs/training.md.
DEFAULT_HEAD_CHUNK_TOKENS = 1024


def _compute_dtype(h: Tensor) -> torch.dtype:
    """The dtype the head matmul runs in: autocast's where it is on, else the input's."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev) and h.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(dev)
    return h.dtype


def _ce_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _spans(n: int, chunk: int):
    step = n if chunk <= 0 else chunk
    return ((s, min(s + step, n)) for s in range(0, n, step))


class _HeadLoss(torch.autograd.Function):
    """``sum(CE(h @ W^T, targets) * weights)`` with the L2Wrap pull; gradients made in forward.

    Inputs: h (N, C) the head input, W (V, C), targets (N,), weights (N,) = mask / denom,
    pull (N,) = strength * mask (0 rows get no pull), chunk tokens, and which gradients to make.
    """

    @staticmethod
    def forward(ctx, h: Tensor, W: Tensor, targets: Tensor, weights: Tensor, pull: Tensor | None,
                chunk: int, dtype: torch.dtype, need_h: bool, need_w: bool):  # noqa: D102
        N = h.shape[0]
        cdt = _ce_dtype(dtype)
        Wc = W.to(dtype)
        grad_h = torch.empty(N, W.shape[1], dtype=dtype, device=h.device) if need_h else None
        # the weight gradient is summed over chunks in at least fp32 (the first chunk writes it);
        # on a CPU its memory is reused from step to step (models/grad_pool.py)
        grad_w = grad_buffer(W, cdt, zeroed=False) if need_w else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for s, e in _spans(N, chunk):
            hc = h[s:e].to(dtype)
            logits = (hc @ Wc.t()).to(cdt)  # (n, V)
            t, w = targets[s:e], weights[s:e].to(cdt)
            rows = torch.arange(e - s, device=h.device)
            top, arg = logits.max(dim=-1)
            picked = logits[rows, t]
            probs = logits.sub_(top.unsqueeze(1)).exp_()  # in place: the one (n, V) buffer
            sums = probs.sum(dim=-1)
            ce = top + sums.log() - picked
            total += (ce * w).sum(dtype=torch.float64)
            # d loss / d logits = softmax * w - onehot(target) * w  (+ the pull at the argmax)
            probs.mul_((w / sums).unsqueeze(1))
            probs[rows, t] -= w
            if pull is not None:
                probs[rows, arg] += top * pull[s:e].to(cdt)
            g = probs.to(dtype)
            if need_h:
                torch.mm(g, Wc, out=grad_h[s:e])
            if need_w:
                if cdt != dtype:  # bf16/fp16 products, summed in fp32
                    part = g.t() @ hc
                    grad_w.copy_(part) if s == 0 else grad_w.add_(part)
                elif s == 0:
                    torch.mm(g.t(), hc, out=grad_w)
                else:
                    grad_w.addmm_(g.t(), hc)
            del probs, g
        ctx.grads = (grad_h, grad_w)
        ctx.dtypes = (h.dtype, W.dtype)
        return total.to(cdt)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # the (V, C) buffer is freed once used
        h_dtype, w_dtype = ctx.dtypes
        # scaled in place: no second (V, C) tensor
        out_h = grad_h.mul_(g.to(grad_h.dtype)).to(h_dtype) if grad_h is not None else None
        # detach: a new tensor on the pooled memory, which autograd keeps as .grad without a copy
        out_w = grad_w.mul_(g.to(grad_w.dtype)).to(w_dtype).detach() if grad_w is not None else None
        return out_h, out_w, None, None, None, None, None, None, None


def _ce_only(h: Tensor, W: Tensor, targets: Tensor, chunk: int, dtype: torch.dtype) -> Tensor:
    """Per-row cross-entropy (N,), chunk by chunk, without gradients."""
    Wc = W.to(dtype)
    out = []
    for s, e in _spans(h.shape[0], chunk):
        logits = (h[s:e].to(dtype) @ Wc.t()).to(_ce_dtype(dtype))
        out.append(F.cross_entropy(logits, targets[s:e], reduction="none"))
        del logits
    return torch.cat(out)


def head_loss(
    h: Tensor,
    weight: Tensor,
    targets: Tensor,
    mask: Tensor,
    denom: Tensor,
    batch_size: int,
    l2wrap: bool = True,
    chunk: int = DEFAULT_HEAD_CHUNK_TOKENS,
) -> Tensor:
    """This chunk's share of the sample loss, from the head input instead of the logits.

    Equal to ``chunk_loss(h @ weight^T, targets, mask, denom, batch_size, l2wrap)`` in value
    and gradient, holding at most ``chunk`` rows of logits at a time.

    Args:
        h: (B, T, C) the head input (``ln_out(x)``).
        weight: (V, C) the head weight.
        targets, mask: (B, T) next-token ids and target-aligned weights (0 or 1).
        denom: scalar, the whole microbatch's mask sum (clamped to >= 1).
        batch_size: B (the pull's strength is ``1e-4 / (sum(mask) / B)``).
        l2wrap: add the top-logit pull when a gradient is made.
        chunk: tokens (rows of B*T) per head chunk; <= 0 is one chunk.
    """
    B, T, C = h.shape
    flat = h.reshape(B * T, C)
    t = targets.reshape(B * T)
    dtype = _compute_dtype(h)
    need_h = h.requires_grad and torch.is_grad_enabled()
    need_w = weight.requires_grad and torch.is_grad_enabled()
    if not (need_h or need_w):
        ce = _ce_only(flat, weight, t, chunk, dtype)
        return (ce * mask.reshape(B * T).to(ce.dtype)).sum() / denom
    cdt = _ce_dtype(dtype)
    maskf = mask.reshape(B * T).to(cdt)
    weights = maskf / denom.to(cdt)
    pull = (TOP_LOGIT_PULL / (float(denom) / batch_size)) * maskf if l2wrap else None
    with torch.autocast(h.device.type, enabled=False):
        loss = _HeadLoss.apply(flat, weight, t, weights, pull, chunk, dtype, need_h, need_w)
    return loss


def token_losses(h: Tensor, weight: Tensor, targets: Tensor, chunk: int = DEFAULT_HEAD_CHUNK_TOKENS) -> Tensor:
    """Per-target cross-entropy (B, T) from the head input (B, T, C), chunk by chunk, no gradient."""
    B, T, C = h.shape
    with torch.no_grad():
        return _ce_only(h.reshape(B * T, C), weight, targets.reshape(B * T), chunk, _compute_dtype(h)).view(B, T)


def head_weight(model: torch.nn.Module) -> Tensor | None:
    """The head's weight when ``model`` can return its head input (``forward(..., head=False)``)
    and its head is a plain bias-free linear layer; None otherwise (a plugin model, a LoRA-adapted head)."""
    if not getattr(model, "head_modes", False):
        return None
    head = getattr(model, "head", None)
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    from rwkv_plug.training.sharding import is_sharded

    if is_sharded([head.weight]):  # FSDP2: outside the model's forward the weight is this rank's shard
        return None
    return head.weight


def model_loss(model, idx: Tensor, state, targets: Tensor, mask: Tensor, denom: Tensor, batch_size: int,
               l2wrap: bool, chunk: int, **model_kw):
    """Run ``model`` on one ctx chunk and return (its loss share, new state).

    ``chunk > 0`` computes the head and loss in token chunks (:func:`head_loss`) where the
    model supports it; ``chunk == 0`` (or a model without head modes) takes the full logits.
    ``model_kw`` go to the model's forward.
    """
    weight = head_weight(model) if chunk > 0 else None
    if weight is None:
        logits, state = model(idx, state, **model_kw)
        return chunk_loss(logits, targets, mask, denom, batch_size, l2wrap), state
    h, state = model(idx, state, head=False, **model_kw)
    return head_loss(h, weight, targets, mask, denom, batch_size, l2wrap, chunk), state


def model_state(model, idx: Tensor, state, **model_kw):
    """Run ``model`` on one ctx chunk for its new state only: a model with ``state_mode``
    skips the output side of its last block and the head (``head="state"``), one with head
    modes computes the head on the last position only."""
    if getattr(model, "state_mode", False):
        return model(idx, state, head="state", **model_kw)[1]
    if getattr(model, "head_modes", False):
        return model(idx, state, head="last", **model_kw)[1]
    return model(idx, state, **model_kw)[1]
