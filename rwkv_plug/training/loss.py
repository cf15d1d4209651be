"""The training loss: masked cross-entropy plus a pull on each position's top logit.

Masks are target-aligned: for inputs ``ids[:, :-1]`` and targets
``ids[:, 1:]`` the weights are ``loss_mask[:, 1:]``. The loss of a sample
is ``sum(CE * mask) / sum(mask)`` over all of its chunks and rows, so a
chunk's loss is its share of that sum (``denom`` is the whole-sample
mask sum, computed once per microbatch).

Training computes the same loss from the head input in token chunks
(:mod:`rwkv_plug.training.head_loss`, ``model.head_chunk_tokens``);
:func:`chunk_loss` on full logits is its reference and the path of
``head_chunk_tokens: 0`` and of models without head modes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Strength of the top-logit pull, per learned token of an average row.
TOP_LOGIT_PULL = 1e-4


def top_logit_pull(logits: torch.Tensor, mask: torch.Tensor, strength: float) -> torch.Tensor:
    """A term whose value is exactly 0 and whose gradient pulls each learned position's
    largest logit towards 0: ``d/d top = strength * top`` (the gradient of
    ``strength * top**2 / 2``), nothing for the other logits or masked positions.

    The idea is RWKV-LM's "L2Wrap" (BlinkDL): it keeps logits from drifting to large
    values without changing the reported loss. Written here as a zero-valued term, so it
    is scaled by the gradient arriving at the loss like the loss itself (accumulation,
    DDP averaging, a loss weight).

    Args:
        logits: (B, T, V).
        mask: (B, T) target-aligned weights (0 or 1).
        strength: the pull per unit of top logit (``TOP_LOGIT_PULL / mean learned tokens per row``).
    """
    top = logits.max(dim=-1).values  # (B, T); its gradient reaches only the argmax logit
    # pull * top has gradient `pull` w.r.t. top; pull is held constant (detached)
    pull = top.detach() * strength * mask.to(logits.dtype)  # (B, T)
    term = (pull * top).sum(dtype=torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else None)
    return term - term.detach()


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
        batch_size: B; the pull's strength is ``1e-4 / (sum(mask) / B)``.
        l2wrap: add the top-logit pull (:func:`top_logit_pull`) when the logits need a gradient.
    """
    B, T, V = logits.shape
    flat = logits.reshape(B * T, V)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # CE in at least fp32
    ce = F.cross_entropy(flat, targets.reshape(B * T), reduction="none")
    maskf = mask.reshape(B * T).to(ce.dtype)
    loss = (ce * maskf).sum() / denom
    if l2wrap and logits.requires_grad:
        strength = TOP_LOGIT_PULL / (float(denom) / batch_size)
        loss = loss + top_logit_pull(logits, mask, strength).to(loss.dtype)
    return loss
