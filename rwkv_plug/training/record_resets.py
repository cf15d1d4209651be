"""Record boundaries inside packed rows (``data.packing_state: reset``), as the trainer sees them.

A reset-packed dataset stores, per row, the offsets where its records start
(``record_starts``, see :mod:`rwkv_plug.data.pack`). Collation turns them into a
``resets`` (B, L) bool tensor, True at every record's first token but the row's
first (the row starts from the fresh state anyway). The BPTT engine cuts it like
the inputs and calls the model with each ctx_len chunk's slice, and the model
restarts its state there: token shifts from zeros, WKV from the fresh start state
(zeros, or the tuned state of ``model.tuning: state``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rwkv_plug.data.pack import RECORD_STARTS


def resets_tensor(rows: Sequence[Mapping[str, Any]], width: int) -> torch.Tensor | None:
    """(B, width) bool, True at each row's record starts after its first token; None when no
    row of the batch has a second record (nothing to reset)."""
    flags = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        starts = [s for s in row.get(RECORD_STARTS) or () if 0 < s < width]
        if starts:
            flags[i, torch.as_tensor(starts, dtype=torch.long)] = True
    return flags if bool(flags.any()) else None


def chunk_resets(resets: torch.Tensor | None, cut: slice) -> torch.Tensor | None:
    """One ctx_len chunk's input slice of ``resets`` (B, L-1 inputs), None when it has none."""
    if resets is None:
        return None
    part = resets[:, cut]
    return part if bool(part.any()) else None


class _Resetting:
    """``model`` called with ``resets=`` bound; its other attributes pass through, so code that
    takes a model (the chunked head and loss) needs no reset argument of its own."""

    def __init__(self, model: torch.nn.Module, resets: torch.Tensor) -> None:
        self._model, self._resets = model, resets

    def __call__(self, idx: torch.Tensor, state, **kwargs):
        return self._model(idx, state, resets=self._resets, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def with_resets(model: torch.nn.Module, resets: torch.Tensor | None):
    """``model`` itself when ``resets`` is None, else ``model`` that restarts its state at them."""
    return model if resets is None else _Resetting(model, resets)
