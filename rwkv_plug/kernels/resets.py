"""State resets inside one WKV call: the optional ``resets`` / ``s_reset`` arguments.

Packed training data (``data.packing_state: reset``) puts several records in one
row, each of which must start from the fresh state, exactly as if trained alone.
A kernel whose caps declare ``resets=True`` accepts, besides the op's inputs::

    resets  : (B, T) bool   True at a token whose step starts from the fresh state
    s_reset : (B, H, N, N)  that fresh state (None: zeros); the tuned start state of
                            ``model.tuning: state``, so it gets its gradient

Before the step of a flagged token ``t`` the state becomes ``s_reset``: whatever
came before (``s0`` or earlier tokens) no longer reaches ``y_t`` or later, and
gets no gradient from them. The chunked kernels reset only at the start of one
of their chunks, so packing places every record at a multiple of
``data.packing_align`` (and ``model.ctx_len`` is a multiple of it as well); a
flag elsewhere is refused by :func:`chunk_flags` rather than computed wrong.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rwkv_plug.core.errors import KernelError


def restart(state: Tensor, flags: Tensor, fresh: Tensor | None) -> Tensor:
    """``state`` (B, H, N, N) with the rows flagged in ``flags`` (B,) replaced by ``fresh``."""
    new = state.new_zeros(()) if fresh is None else fresh.to(state.dtype)
    return torch.where(flags.view(-1, 1, 1, 1), new, state)


def chunk_flags(resets: Tensor, chunk: int, T: int, kernel: str) -> Tensor:
    """The per-chunk reset flags ``(B, ceil(T / chunk))`` of per-token ``resets`` (B, T).

    Raises :class:`KernelError` when a flag is not on a chunk's first token.
    """
    if tuple(resets.shape) != (resets.shape[0], T) or resets.dtype != torch.bool:
        raise ValueError(f"resets must be a (B, {T}) bool tensor, got {tuple(resets.shape)} {resets.dtype}")
    off = torch.arange(T, device=resets.device) % chunk != 0
    if bool(resets[:, off].any()):
        t = int(off.nonzero()[resets[:, off].any(0).nonzero()[0, 0]])
        raise KernelError(
            f"kernel '{kernel}' resets the state only at multiples of {chunk} tokens, but a packed record "
            f"starts at token {t} of a model.ctx_len chunk: set data.packing_align to a multiple of {chunk} "
            "(and model.ctx_len to a multiple of data.packing_align), then rebuild the data")
    return resets[:, ::chunk]
