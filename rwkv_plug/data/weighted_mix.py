"""Token-weighted datapack mixes: pick each part's train rows so trained tokens meet the weights.

A part's weight is its share of the mix's *trained* tokens (mask-1 target
tokens; a sample's first token is never a target). Weights are normalised to
sum to one. Two ways to meet them (``datapack.weighting``):

* ``subsample`` (the default): the largest mix that repeats no row. The part
  whose tokens run out first relative to its weight is taken whole, and
  the others are cut to match it. No sample is seen twice per epoch, so a
  weight never turns into memorisation of a small part; the cost is that
  rows of the over-represented parts are left out.
* ``repeat``: the smallest mix that leaves no row out. The part with the
  most tokens relative to its weight is taken whole, and the others are
  repeated (whole copies, then a sampled remainder) up to their share.

Which rows are cut (or make up a remainder) is a seeded shuffle of the
part's rows, cut where the running total of trained tokens comes closest
to the target, so the same seed gives the same mix and a share misses its
weight by at most about one row's tokens.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WEIGHTINGS = ("subsample", "repeat")


@dataclass
class PartShare:
    """What one part gave the mix's train split."""

    name: str
    weight: float  # normalised
    rows: int  # rows taken, repeats counted
    rows_available: int
    trained_tokens: int  # taken, repeats counted
    trained_available: int
    share: float = 0.0  # of the mix's trained tokens

    def line(self) -> str:
        return (f"datapack part {self.name}: weight {self.weight:.4f}, share {self.share:.4f} of trained tokens "
                f"(taken: {self.trained_tokens} trained tokens in {self.rows} rows; available: "
                f"{self.trained_available} in {self.rows_available} rows)")


def weight_problems(weights: Sequence[Any], names: Sequence[str]) -> list[str]:
    """What is wrong with the datasets' ``weight`` values (None: not given); empty when none is set."""
    given = [(n, w) for n, w in zip(names, weights) if w is not None]
    if not given:
        return []
    problems = []
    for name, w in given:
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            problems.append(f"dataset {name}: weight must be a number (its share of trained tokens), got {w!r}")
        elif w < 0:
            problems.append(f"dataset {name}: weight must be 0 or more, got {w}")
    missing = [n for n, w in zip(names, weights) if w is None]
    if missing:
        problems.append(f"weights are given for {', '.join(n for n, _ in given)} but not for {', '.join(missing)}: "
                        "give every dataset a weight, or none")
    elif not problems and not any(w > 0 for _, w in given):
        problems.append("every dataset's weight is 0: at least one must be more than 0")
    return problems


def trained_per_row(ds, batch_rows: int = 10_000) -> np.ndarray:
    """Each row's trained tokens (its loss mask summed, the first token left out), int64."""
    import pyarrow as pa

    out = []
    for t in ds.with_format("arrow").iter(batch_size=batch_rows):
        col = t.column("loss_mask")
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        offsets = arr.offsets.to_numpy().astype(np.int64)
        values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64)  # relative to offsets[0]
        offsets = offsets - offsets[0]
        running = np.concatenate([[0], np.cumsum(values)])
        sums = running[offsets[1:]] - running[offsets[:-1]]
        nonempty = offsets[1:] > offsets[:-1]
        sums[nonempty] -= values[offsets[:-1][nonempty]]
        out.append(sums)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _prefix_for(trained: np.ndarray, order: np.ndarray, target: float) -> np.ndarray:
    """The shortest prefix of ``order`` whose trained tokens come closest to ``target``."""
    running = np.concatenate([[0], np.cumsum(trained[order])])
    n = int(np.searchsorted(running, target))
    if n > len(order):
        return order
    if n > 0 and target - running[n - 1] <= running[n] - target:
        n -= 1
    return order[:n]


def choose_rows(trained: Sequence[np.ndarray], weights: Sequence[float], seed: int,
                weighting: str) -> list[np.ndarray]:
    """Row indices to take from each part (repeats included), in the part's own order.

    ``trained[i]`` is part i's trained tokens per row; ``weights`` are >= 0 with
    one above 0, and every part with a weight above 0 has trained tokens.
    """
    total = sum(weights)
    share = [w / total for w in weights]
    have = [int(t.sum()) for t in trained]
    ratios = [h / s for h, s in zip(have, share) if s > 0]
    size = min(ratios) if weighting == "subsample" else max(ratios)
    out = []
    for i, (t, s) in enumerate(zip(trained, share)):
        if s == 0:
            out.append(np.zeros(0, np.int64))
            continue
        target = s * size
        copies = int(target // have[i]) if have[i] else 0
        rest = target - copies * have[i]
        if rest >= have[i] - 0.5:  # float noise on the part that sets the size: take it whole
            copies, rest = copies + 1, 0.0
        order = np.random.default_rng([seed, i]).permutation(len(t))
        picked = np.sort(_prefix_for(t, order, rest)) if rest >= 0.5 else np.zeros(0, np.int64)
        out.append(np.concatenate([np.tile(np.arange(len(t)), copies), picked]).astype(np.int64))
    return out


def shares(names: Sequence[str], weights: Sequence[float], trained: Sequence[np.ndarray],
           picked: Sequence[np.ndarray]) -> list[PartShare]:
    """The achieved share of each part, for the report and the metadata."""
    total_w = sum(weights)
    parts = [PartShare(name, w / total_w, len(rows), len(t), int(t[rows].sum()), int(t.sum()))
             for name, w, t, rows in zip(names, weights, trained, picked)]
    total = sum(p.trained_tokens for p in parts)
    for p in parts:
        p.share = p.trained_tokens / total if total else 0.0
    return parts
