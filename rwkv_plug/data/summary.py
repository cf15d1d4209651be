"""What a build did, in numbers: kept in the dataset's metadata and printed by preload."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rwkv_plug.core.errors import DataError


@dataclass
class Skipped:
    count: int
    example_row: int  # 0-based row of the source split
    split: str
    where: str = ""  # the example's file:line, when known


@dataclass
class SplitStats:
    samples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    max_id: int = -1  # the largest token id (-1: no tokens, or a record from before it was kept)


@dataclass
class Summary:
    strategy: str = ""
    tokenizer: str = ""
    rows_in: dict[str, int] = field(default_factory=dict)
    documents_kept: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, Skipped] = field(default_factory=dict)
    rechunk_size: int = 0
    rechunk_remainder: dict[str, int] = field(default_factory=dict)
    splits: dict[str, SplitStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, count: int, example_row: int, split: str, where: str = "") -> None:
        old = self.skipped.get(reason)
        if old is None:
            self.skipped[reason] = Skipped(count, example_row, split, where)
        else:
            old.count += count

    def why_few(self) -> str:
        """Why few train samples may be left: rows skipped, and how rechunking counts."""
        parts = []
        rows_in, kept = self.rows_in.get("train", 0), self.documents_kept.get("train", 0)
        if rows_in > kept:
            reasons = ", ".join(f"{k}: {v.count}" for k, v in self.skipped.items() if v.split == "train")
            parts.append(f"{rows_in - kept} of {rows_in} source rows were skipped ({reasons})")
        if self.rechunk_size > 0:
            parts.append(f"a sample is {self.rechunk_size} tokens after rechunking")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Summary":
        s = cls(**{k: v for k, v in data.items() if k not in ("skipped", "splits")})
        s.skipped = {k: Skipped(**v) for k, v in data.get("skipped", {}).items()}
        s.splits = {k: SplitStats(**v) for k, v in data.get("splits", {}).items()}
        return s

    def lines(self) -> list[str]:
        out = [f"strategy {self.strategy}, tokenizer {self.tokenizer}"]
        rows_in = sum(self.rows_in.values())
        kept = sum(self.documents_kept.values())
        out.append(f"rows in: {rows_in} ({_per_split(self.rows_in)}); rows kept: {kept}; "
                   f"rows skipped: {rows_in - kept}")
        for reason, s in sorted(self.skipped.items(), key=lambda kv: -kv[1].count):
            at = f", {s.where}" if s.where else ""
            out.append(f"  skipped {s.count}: {reason} (e.g. {s.split} row {s.example_row}, 0-based{at})")
        if self.rechunk_size > 0:
            lost = sum(self.rechunk_remainder.values())
            out.append(f"rechunked to {self.rechunk_size} tokens per sample; remainder dropped: "
                       f"{lost} tokens ({_per_split(self.rechunk_remainder)})")
        tokens = sum(s.tokens for s in self.splits.values())
        trained = sum(s.trained_tokens for s in self.splits.values())
        ratio = trained / tokens if tokens else 0.0
        out.append(f"tokens: {tokens}; trained tokens: {trained} ({ratio:.1%})")
        out.append("samples: " + ", ".join(f"{k} {v.samples}" for k, v in _ordered(self.splits)))
        out.extend(f"note: {n}" for n in self.notes)
        return out


def _ordered(d: dict) -> list:
    return sorted(d.items(), key=lambda kv: ({"train": 0, "test": 1}.get(kv[0], 2), kv[0]))


def _per_split(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in _ordered(d)) or "none"


def split_stats(ds, batch_rows: int = 10_000) -> tuple[SplitStats, np.ndarray]:
    """Samples, tokens, trained tokens and the largest id of a split, plus every sample's length."""
    import pyarrow.compute as pc

    stats = SplitStats()
    lengths = []
    for t in ds.with_format("arrow").iter(batch_size=batch_rows):
        lens = pc.list_value_length(t.column("input_ids")).to_numpy(zero_copy_only=False)
        lengths.append(lens)
        stats.samples += len(lens)
        stats.tokens += int(lens.sum())
        # Arrow sums int8 into int64 already: no per-token int64 copy needed. A sample's
        # first token is never a target (masks are target-aligned), so its bit does not count.
        masks = t.column("loss_mask")
        stats.trained_tokens += int(pc.sum(pc.list_flatten(masks)).as_py() or 0)
        stats.trained_tokens -= int(pc.sum(pc.list_flatten(pc.list_slice(masks, 0, 1))).as_py() or 0)
        top = pc.max(pc.list_flatten(t.column("input_ids"))).as_py()
        if top is not None:
            stats.max_id = max(stats.max_id, int(top))
    all_lengths = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
    return stats, all_lengths


def chunk_stats(size: int, res: Any, rows: np.ndarray | None = None) -> SplitStats:
    """``split_stats`` of a rechunked split, from what the rechunker kept per chunk
    (``res``: its ``RechunkResult``): of the chunks ``rows`` (indices), or of all."""
    trained, top = (res.trained, res.top_ids) if rows is None else (res.trained[rows], res.top_ids[rows])
    samples = len(trained)
    return SplitStats(samples=samples, tokens=samples * size, trained_tokens=int(trained.sum()),
                      max_id=int(top.max()) if samples and size else -1)


def finish_summary(dd: Any, summary: Summary, vocab_size: int) -> None:
    """The statistics of each split of ``dd`` not in ``summary`` yet; raises a ``DataError``
    if a split holds an id outside the vocab."""
    for name, ds in dd.items():
        stats = summary.splits.get(name)
        if stats is None:
            stats = summary.splits[name] = split_stats(ds)[0]
        if stats.max_id >= vocab_size:
            raise DataError(f"the {name} split holds token id {stats.max_id}, outside the tokenizer's "
                            f"vocab of {vocab_size}; the tokenizer or the strategy made it (a strategy "
                            "must only emit ids its tokenizer gives)")
