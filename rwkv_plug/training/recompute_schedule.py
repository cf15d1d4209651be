"""Which chunk-start states exact BPTT keeps, and how it recomputes the others.

Exact BPTT (:mod:`rwkv_plug.training.bptt`) needs, in reverse order, the
start state of every chunk of a sample. Keeping all of them costs memory
linear in the sample length. With a budget of ``slots`` kept states, this
module plans binomial checkpointing: the forward sweep keeps a few start
states, and the backward runs chunks again without autograd from the
nearest kept state to rebuild the others, keeping some of those in turn.

The schedule and its optimality follow Griewank's binomial checkpointing
(A. Griewank, "Achieving logarithmic growth of temporal and spatial
complexity in reverse automatic differentiation", 1992; Griewank and
Walther, "Algorithm 799: revolve", 2000). The code is written here from
the recurrences below, not taken from revolve.

Reversing ``length`` chunks from a held start state with ``slots`` more
states allowed, where no chunk runs more than ``r`` times without autograd,
works for at most ``C(slots + r + 1, slots + 1)`` chunks; the fewest such
runs in all is ``r * length - C(slots + r + 1, slots + 2)`` for the smallest
such ``r`` (:func:`runs`). When every start fits (``slots >= length - 1``)
that is ``length - 1``: each chunk once, which the forward sweep does
anyway, so keeping all states costs no extra work.

Chunks are numbered ``0 .. n - 1``; chunk 0 starts from the model's zero
state (made again, never kept), and the state after chunk ``n - 1`` is the
Function's output, which is not kept here either.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from math import comb

#: ``model.bptt_kept_states`` by default. Samples of up to 66 chunks keep every start state
#: (no extra work). A longer sample of ``n`` chunks adds :func:`extra_runs` chunk runs without
#: autograd (state only: no head, no loss) to its backward: under one per chunk up to 2212
#: chunks (1.1M tokens at ctx_len 512), under two up to 50116, under three up to ~900k.
DEFAULT_KEPT_STATES = 64

#: ``model.bptt_kept_states: auto``: the kept states may take this fraction of the training bytes
#: (:func:`auto_slots`), so they add at most ~10% to a step's peak, never fewer than the default.
AUTO_FRACTION = 0.1


def auto_slots(weight_bytes: int, trained_bytes: int, state_bytes: int) -> int:
    """``model.bptt_kept_states: auto``: as many kept states as fit in :data:`AUTO_FRACTION` of the
    training bytes, at least :data:`DEFAULT_KEPT_STATES`.

    The training bytes are the weights' plus, per trained weight, its gradient and Adam's two
    moments (``weight_bytes + 3 * trained_bytes``); ``state_bytes`` is one kept state with its
    RNG state. Independent of the sample length, so memory stays bounded however long the sample.
    """
    budget = int(AUTO_FRACTION * (weight_bytes + 3 * trained_bytes))
    return max(DEFAULT_KEPT_STATES, budget // max(1, state_bytes))


def is_auto(slots) -> bool:
    return slots == "auto"


@dataclass(frozen=True)
class Run:
    """Run chunks ``start .. stop - 1`` without autograd from the start state of ``start``.

    ``keep``: store the state they end in (the start of ``stop``) in a free
    slot; otherwise it is held only for the :class:`Step` that follows.
    """

    start: int
    stop: int
    keep: bool


@dataclass(frozen=True)
class Step:
    """Run chunk ``chunk`` again with autograd from its start state and backpropagate through it."""

    chunk: int


@dataclass(frozen=True)
class Drop:
    """Free the slot holding the start state of ``chunk``."""

    chunk: int


Action = Run | Step | Drop


def unbounded(slots: int) -> bool:
    """``slots < 0`` (``model.bptt_kept_states: -1``) keeps every start state."""
    return slots < 0


def _repetitions(length: int, slots: int) -> int:
    """The smallest r with C(slots + r + 1, slots + 1) >= length."""
    r = 0
    while comb(slots + r + 1, slots + 1) < length:
        r += 1
    return r


def runs(length: int, slots: int) -> int:
    """Fewest chunk runs without autograd to reverse ``length`` chunks from a held start state."""
    if length <= 1:
        return 0
    r = _repetitions(length, slots)
    return r * length - comb(slots + r + 1, slots + 2)


def split(length: int, slots: int) -> int:
    """Where to keep the next state, as an offset in ``1 .. length - 1`` (``slots >= 1``).

    Reversing ``length`` chunks by keeping the state at offset ``m`` costs
    ``m + runs(length - m, slots - 1) + runs(m, slots)``, a convex function
    of ``m`` (``runs`` is piecewise linear with growing slopes); the
    smallest minimiser is found by bisection on its differences.
    """
    def cost(m: int) -> int:
        return m + runs(length - m, slots - 1) + runs(m, slots)

    lo, hi = 1, length - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(mid + 1) - cost(mid) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


def slots_used(n: int, slots: int) -> int:
    """Slots a sample of ``n`` chunks needs at most: ``min(slots, n - 1)``, all when unbounded."""
    need = max(0, n - 1)
    return need if unbounded(slots) else min(slots, need)


def forward_keeps(n: int, slots: int) -> list[int]:
    """The chunks whose start states the forward sweep keeps, in order."""
    slots = slots_used(n, slots)
    kept, a = [], 0
    while n - a > 1 and slots > 0:
        a += split(n - a, slots)
        kept.append(a)
        slots -= 1
    return kept


def backward(n: int, slots: int) -> Iterator[Action]:
    """The backward's actions, after the forward sweep kept :func:`forward_keeps`.

    Every chunk gets exactly one :class:`Step`, in the order ``n - 1 .. 0``;
    a step's start state is kept, is chunk 0's zero state, or was made by
    the :class:`Run` just before it. No more than ``slots`` states are kept
    at once.
    """
    free = slots_used(n, slots)
    chain = forward_keeps(n, slots)
    # the forward sweep did the first Run of every level of the recursion: replay the rest
    todo: list[tuple] = []
    starts = [0, *chain]
    for k, a in enumerate(starts):
        b = starts[k + 1] if k + 1 < len(starts) else n
        if k > 0:
            todo.append(("drop", a))
        todo.append(("reverse", a, b, free - k))
    while todo:
        job = todo.pop()
        if job[0] == "drop":
            yield Drop(job[1])
            continue
        _, a, b, s = job
        if b - a == 1:
            yield Step(a)
        elif s == 0:  # no slot left: run from a to each later chunk in turn (quadratic, O(1) memory)
            for j in range(b - 1, a, -1):
                yield Run(a, j, keep=False)
                yield Step(j)
            yield Step(a)
        else:
            m = a + split(b - a, s)
            yield Run(a, m, keep=True)
            todo.extend((("reverse", a, m, s), ("drop", m), ("reverse", m, b, s - 1)))


def extra_runs(n: int, slots: int) -> int:
    """Chunk runs without autograd the backward adds for a budget of ``slots`` (0 when all fit)."""
    if unbounded(slots) or slots >= n - 1:
        return 0
    chain = forward_keeps(n, slots)
    return runs(n, slots) - (chain[-1] if chain else 0)
