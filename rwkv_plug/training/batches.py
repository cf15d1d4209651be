"""Batches for training: collation (padded to the longest sample) and a resumable per-rank sampler."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from rwkv_plug.training.record_resets import resets_tensor


def padded_length(longest: int) -> int:
    """A microbatch's width: its longest sample (at least 2 tokens: one input, one target).

    Not rounded up to whole chunks of ``ctx_len``: the last chunk may be shorter
    (the kernels take any length), and padding only ever follows a row's real
    tokens with mask 0, so it adds no loss and no gradient.
    """
    return max(2, longest)


def collate(rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad a microbatch to its longest sample with id 0 / mask 0; ``lengths`` keeps the true lengths.

    Reset-packed rows (a ``record_starts`` column) add ``resets`` (B, L) bool, True at their records'
    first tokens (training/record_resets.py), when the batch has a row of two records or more.
    """
    lengths = [len(r["input_ids"]) for r in rows]
    L = padded_length(max(lengths))
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        n = lengths[i]
        ids[i, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
        mask[i, :n] = torch.as_tensor(r["loss_mask"], dtype=torch.long)
    batch = {"input_ids": ids, "loss_mask": mask, "lengths": torch.tensor(lengths, dtype=torch.long)}
    resets = resets_tensor(rows, L)
    if resets is not None:
        batch["resets"] = resets
    return batch


class ResumableSampler(Sampler[int]):
    """DistributedSampler semantics (interleaved per rank, drop_last, epoch-seeded
    shuffle) plus an exact skip of the samples a resumed epoch already consumed."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = False, seed: int = 0):
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, epoch: int, samples: int) -> None:
        """On resume: leave out the first ``samples`` of ``epoch`` (this rank's share)."""
        self._skip = (epoch, samples)

    def per_rank(self) -> int:
        return self.size // self.num_replicas

    def indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank() * self.num_replicas
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        idx = self.indices(self.epoch)
        if self._skip is not None and self._skip[0] == self.epoch:
            idx = idx[self._skip[1] :]
            self._skip = None  # only the resumed epoch is shortened
        return iter(idx)

    def __len__(self) -> int:
        # the full epoch: Lightning's restored batch counter finishes it
        return self.per_rank()


class EvalSampler(Sampler[int]):
    """Validation order: every row exactly once over all ranks (rank ``r``: rows
    ``r, r+W, ...``). Ranks that run out get indices past the end, which
    :class:`EvalRows` turns into filler rows, so every rank runs the same
    number of batches (no rank skips a collective) and no row is dropped."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        self.size, self.num_replicas, self.rank = size, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self) * self.num_replicas, self.num_replicas))

    def __len__(self) -> int:
        return -(-self.size // self.num_replicas)


class EvalRows:
    """``rows``, and past their end a filler row with loss mask 0 (adds no loss, no tokens)."""

    FILLER = {"input_ids": [0, 0], "loss_mask": [0, 0]}

    def __init__(self, rows: Sequence[Mapping[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        return self.rows[i] if i < len(self.rows) else self.FILLER
