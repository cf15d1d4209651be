"""The end of a model's forward: ``ln_out`` then the head, on every position, the last, or none.

``forward(idx, state, head=...)`` of the built-in models takes:

* ``True`` (default): logits (B, T, V) of every position;
* ``"last"``: logits (B, 1, V) of the last position only (generation needs no more);
* ``False``: the head input ``ln_out(x)`` (B, T, C), for the chunked head and loss of
  :mod:`rwkv_plug.training.head_loss`, which multiplies by ``model.head.weight`` itself.

A model class that accepts ``head`` says so with ``head_modes = True``. One that also takes
``head="state"`` (the new state only, output None; the last block skips what the state does
not need, e.g. ``RWKV5``) says so with ``state_mode = True``; exact BPTT's added runs use it
(:func:`rwkv_plug.training.head_loss.model_state`).
"""

from __future__ import annotations

from torch import Tensor, nn


def head_out(ln_out: nn.Module, head: nn.Module, x: Tensor, mode: bool | str = True) -> Tensor:
    """``head(ln_out(x))`` for ``mode`` (see the module docstring); x is (B, T, C)."""
    if mode is False:
        return ln_out(x)  # (B, T, C)
    if isinstance(mode, str) and mode == "last":
        x = x[:, -1:]  # (B, 1, C)
    elif mode is not True:
        raise ValueError(f"head must be True, False or 'last', got {mode!r}")
    return head(ln_out(x))  # (B, T or 1, V)
