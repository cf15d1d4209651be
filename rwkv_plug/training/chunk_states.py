"""Per-chunk tensors kept between the forward and the backward of exact BPTT.

Exact BPTT (:mod:`rwkv_plug.training.bptt`) keeps the start states of some
chunks (and the RNG state at each, to replay dropout): all of them, or at
most ``model.bptt_kept_states`` at once, the others being run again from
the nearest kept one (:mod:`rwkv_plug.training.recompute_schedule`).
Kept as one small tensor per layer and chunk, a 64k-token sample at ctx
128 is thousands of 16-64 KB allocations, and the process grew 3-4x faster
than the bytes stored (allocator fragmentation). Here every tensor of a
chunk's state is copied into one preallocated buffer per (shape, dtype,
device), of shape ``(slots, count, *shape)``, so a whole sample's states
are a handful of large allocations whose size is exactly the bytes kept:

    per kept state:  sum over layers of  2 * B * C * itemsize  +  B * H * N * N * 4

for RWKV-v5 (token-shift states in the model's dtype, the WKV state in
fp32, fp64 for fp64 models). A sample of ``n`` chunks keeps at most
``K = min(M, n - 2)`` such states in :class:`KeptStarts` for a budget of
``M`` (``K = n - 2`` when unbounded: chunks ``1 .. n-2``; chunk 0 starts
from zeros), plus the one handed to the last chunk, plus ``K + 1`` RNG
states (5056 bytes each on CPU).
"""

from __future__ import annotations

import torch

from rwkv_plug.core import notice
from rwkv_plug.core.errors import TrainingError
from rwkv_plug.training.recompute_schedule import auto_slots, is_auto

Tensors = tuple[torch.Tensor, ...]


def _key(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.dtype, t.device


def kept_slots(kept, model: torch.nn.Module, state: Tensors, rng: Tensors) -> int:
    """``model.bptt_kept_states`` as a count: ``auto`` sized from ``model``'s weights
    (:func:`rwkv_plug.training.recompute_schedule.auto_slots`), a number as it is."""
    if not is_auto(kept):
        return int(kept)
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trained = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    one = sum(t.numel() * t.element_size() for t in (*state, *rng))
    return auto_slots(weights, trained, one)


class ChunkStore:
    """``slots`` tuples of tensors, all with one layout, stored in place in shared buffers.

    The buffers are allocated on the first :meth:`put`, from that tuple's
    layout. A later tuple with another layout (a model whose state changes
    shape or dtype between chunks) is kept as its own tensors instead, and
    that is said once: exactness never depends on the layout.
    """

    def __init__(self, slots: int, what: str) -> None:
        self.slots, self.what = slots, what
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._layout: list[tuple[tuple, int]] = []  # per tensor: (buffer key, position in its group)
        self._loose: dict[int, Tensors] = {}
        self._allocated = False

    def put(self, slot: int, tensors: Tensors) -> Tensors:
        """Store ``tensors`` (copied) at ``slot``; returns the stored copies (views)."""
        if not self._allocated:
            self._allocate(tensors)
        if [_key(t) for t in tensors] != [key for key, _ in self._layout]:
            notice.warn_once(("chunk store layout", self.what),
                             f"exact BPTT: the {self.what} changed shape or dtype between chunks; keeping "
                             "those chunks' copies as separate tensors (more memory, same gradients)")
            self._loose[slot] = tuple(t.detach().clone() for t in tensors)
            return self._loose[slot]
        out = []
        for t, (key, pos) in zip(tensors, self._layout):
            view = self._buffers[key][slot, pos]
            view.copy_(t.detach())
            out.append(view)
        return tuple(out)

    def get(self, slot: int) -> Tensors:
        """The tensors stored at ``slot`` (views into the buffers)."""
        if slot in self._loose:
            return self._loose[slot]
        return tuple(self._buffers[key][slot, pos] for key, pos in self._layout)

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor holding stored data (the shared buffers, then any loose copies)."""
        return list(self._buffers.values()) + [t for ts in self._loose.values() for t in ts]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _allocate(self, tensors: Tensors) -> None:
        self._allocated = True
        counts: dict[tuple, int] = {}
        for t in tensors:
            key = _key(t)
            self._layout.append((key, counts.get(key, 0)))
            counts[key] = counts.get(key, 0) + 1
        for (shape, dtype, device), count in counts.items():
            self._buffers[(shape, dtype, device)] = torch.empty(
                (self.slots, count, *shape), dtype=dtype, device=device)


class KeptStarts:
    """Chunk-start states and RNG states, at most ``slots`` of each at once, by chunk number.

    Chunk 0 starts from the model's zero state, which is made again rather
    than kept; its RNG state has a slot of its own. Slots are reused as
    states are dropped, so the buffers never grow past ``slots`` states
    however long the sample; :attr:`peak` is the most held at once.
    """

    def __init__(self, slots: int) -> None:
        self.states = ChunkStore(slots, "state")
        self.rngs = ChunkStore(slots + 1, "RNG state")  # the last slot: chunk 0's
        self._slot: dict[int, int] = {}
        self._free = list(range(slots - 1, -1, -1))
        self.peak = 0

    def start(self, rng: Tensors) -> None:
        """Keep chunk 0's RNG state."""
        self.rngs.put(self.states.slots, rng)

    def keep(self, chunk: int, state: Tensors, rng: Tensors) -> Tensors:
        """Copy ``chunk``'s start state and RNG state into a free slot; returns the stored state."""
        if chunk in self._slot or not self._free:
            raise TrainingError(f"exact BPTT: no free slot for chunk {chunk}'s start state "
                                f"({self.states.slots} slots); this is a bug in the recompute schedule")
        slot = self._free.pop()
        self._slot[chunk] = slot
        self.peak = max(self.peak, len(self._slot))
        self.rngs.put(slot, rng)
        return self.states.put(slot, state)

    def held(self, chunk: int) -> bool:
        return chunk in self._slot

    def get(self, chunk: int) -> tuple[Tensors | None, Tensors]:
        """(start state, RNG state) of ``chunk``; the state is None for chunk 0 (zeros)."""
        if chunk == 0:
            return None, self.rngs.get(self.states.slots)
        slot = self._slot[chunk]
        return self.states.get(slot), self.rngs.get(slot)

    def drop(self, chunk: int) -> None:
        """Free ``chunk``'s slot for reuse."""
        self._free.append(self._slot.pop(chunk))

    def buffers(self) -> list[torch.Tensor]:
        return self.states.buffers() + self.rngs.buffers()

    def nbytes(self) -> int:
        """Bytes of the kept start states (the RNG states not included)."""
        return self.states.nbytes()
