"""The training loss: masked cross-entropy with RWKV's L2Wrap.

Masks are target-aligned: for inputs ``ids[:, :-1]`` and targets
``ids[:, 1:]`` the weights are ``loss_mask[:, 1:]``. The loss of a sample
is ``sum(CE * mask) / sum(mask)`` over all of its chunks and rows, so a
chunk's loss is its share of that sum (``denom`` is the whole-sample
mask sum, computed once per microbatch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: RWKV's L2Wrap strength: pushes the largest logit towards zero.
L2WRAP_SCALE = 1e-4


class L2Wrap(torch.autograd.Function):
    """Identity on ``loss``; backward also nudges each position's top logit.

    The extra logits gradient is ``max_logit * 1e-4 / (sum(mask) / B)`` at
    each position's argmax, masked. It is the gradient of a small penalty
    term, so it is scaled by the incoming gradient like the loss itself
    (identical to RWKV for a loss weight of 1; gradient accumulation and
    DDP averaging then apply to it as well).
    """

    @staticmethod
    def forward(ctx, loss, logits, mask, factor):  # noqa: D102
        ctx.save_for_backward(logits, mask)
        ctx.factor = factor
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: D102
        logits, mask = ctx.saved_tensors
        maxx, ids = torch.max(logits, dim=-1, keepdim=True)  # (B, T, 1)
        gy = torch.zeros_like(logits)
        # scale the (B, T, 1) values before scattering: no pass over the (B, T, V) tensor
        scale = (maxx * ctx.factor) * mask.unsqueeze(-1).to(logits.dtype) * grad_loss.to(logits.dtype)
        gy.scatter_(-1, ids, scale)
        return grad_loss, gy, None, None


def chunk_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    denom: torch.Tensor,
    batch_size: int,
    l2wrap: bool = True,
) -> torch.Tensor:
    """This chunk's share of the sample loss.

    Args:
        logits: (B, T, V) predictions for ``targets``.
        targets: (B, T) next-token ids.
        mask: (B, T) target-aligned weights (0 or 1).
        denom: scalar, the whole microbatch's mask sum (clamped to >= 1).
        batch_size: B, for the L2Wrap normaliser ``sum(mask) / B``.
    """
    B, T, V = logits.shape
    flat = logits.reshape(B * T, V)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # CE in at least fp32
    ce = F.cross_entropy(flat, targets.reshape(B * T), reduction="none")
    maskf = mask.reshape(B * T).to(ce.dtype)
    loss = (ce * maskf).sum() / denom
    if l2wrap and logits.requires_grad:
        factor = L2WRAP_SCALE / (float(denom) / batch_size)
        loss = L2Wrap.apply(loss, logits, mask.to(logits.dtype), factor)
    return loss
