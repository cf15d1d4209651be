"""The per-layer recurrent state both RWKV models carry between chunks."""

from __future__ import annotations

import torch
from torch import Tensor


def start_state(n_layer: int, batch: int, n_embd: int, n_head: int, head_size: int,
                dtype: torch.dtype, wkv_dtype: torch.dtype, device, tuned_state=None) -> tuple[Tensor, ...]:
    """Per layer ``(att_shift (B, C), wkv (B, H, N, N), ffn_shift (B, C))``, flattened.

    The shifts are zeros in ``dtype``; the WKV part is zeros in ``wkv_dtype``, or the
    trainable start state of ``model.tuning: state`` (``tuned_state``) expanded over the batch.
    """
    state: list[Tensor] = []
    for i in range(n_layer):
        state += [
            torch.zeros(batch, n_embd, dtype=dtype, device=device),
            torch.zeros(batch, n_head, head_size, head_size, dtype=wkv_dtype, device=device)
            if tuned_state is None else tuned_state.batch(i, batch, device),
            torch.zeros(batch, n_embd, dtype=dtype, device=device),
        ]
    return tuple(state)


def restart_wkv(tuned_state, layer: int, batch: int, device, resets: Tensor | None) -> Tensor | None:
    """The WKV state a packed record restarts from in ``layer``: None (zeros) without a tuned
    start state or without ``resets``, else the tuned state, so every record starts from it
    exactly as if trained alone (and its gradient reaches the tuned state)."""
    if resets is None or tuned_state is None:
        return None
    return tuned_state.batch(layer, batch, device)
