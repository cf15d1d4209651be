"""Each rank's random state in checkpoints, so a resumed run continues every rank's streams.

A state is a dict of tensors, ints, floats and tuples (no numpy arrays), so
checkpoints still load with ``torch.load(..., weights_only=True)``:
``torch`` (CPU generator), ``cuda`` (this rank's device, or None),
``python`` (``random.getstate()``) and ``numpy`` (the legacy global
generator, its key as an int64 tensor).
"""

from __future__ import annotations

import random
from typing import Any

import torch

State = dict[str, Any]


def capture(device: torch.device) -> State:
    """This process's random state (CUDA: only ``device``'s generator)."""
    state: State = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": None,
    }
    try:
        import numpy as np
    except ImportError:
        return state
    name, key, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (str(name), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    return state


def restore(state: State, device: torch.device) -> None:
    """Set what ``state`` holds; a part it lacks (or another device kind's) is left alone."""
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if state.get("numpy") is not None:
        import numpy as np

        name, key, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))


def split_for_rank(rank: int) -> None:
    """Give rank ``rank`` (> 0) a torch stream of its own, derived from this process's seed.

    Every rank starts from the same seed (``seed_everything`` or torch's fixed default), so
    without this all ranks would draw the same dropout masks. Rank 0 keeps its stream, so a
    one-process run draws what it always did.
    """
    if rank > 0:
        torch.manual_seed((torch.initial_seed() + rank * _RANK_STRIDE) % 2**63)


_RANK_STRIDE = 0x9E3779B97F4A7C15  # odd, so ranks never collide modulo 2**63


def gather(state: State) -> list[State]:
    """Every rank's state, in rank order (a collective: all ranks must call it)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [state]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


def pick(states: list[State], rank: int, world_size: int) -> tuple[State | None, str | None]:
    """This rank's saved state, and a note when the checkpoint's world size differs."""
    own = states[rank] if rank < len(states) else None
    if not states or len(states) == world_size:
        return own, None
    saved = len(states)
    head = f"resume: the checkpoint holds the random state of {saved} rank(s) but this run has {world_size}; "
    if world_size < saved:
        return own, head + f"each rank continues its own stream; the saved state of {_span(world_size, saved)} is unused"
    return own, head + (
        f"{_span(saved, world_size)}: no saved state, kept the seeded one, so dropout draws differ "
        "from an uninterrupted run"
    )


def _span(first: int, end: int) -> str:
    return f"rank {first}" if end - first == 1 else f"ranks {first}-{end - 1}"


def from_checkpoint(pos: dict[str, Any]) -> list[State]:
    """The per-rank states of a checkpoint's ``rwkv_plug`` entry (older ones: rank 0's CPU state)."""
    if "rng" in pos:
        return list(pos["rng"])
    if pos.get("rng_cpu") is not None:
        return [{"torch": pos["rng_cpu"]}]
    return []
