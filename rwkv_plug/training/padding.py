"""How much of the training batches is padding (``fit`` and ``inspect`` report it).

A microbatch is padded to its longest sample (training/batches.py), so rows of
very different lengths in one batch waste compute on padding. The share is
counted over the token positions of the batches one epoch makes: padding /
(rows x batch width). Numpy only: ``inspect`` imports it without torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

#: From this share of padding on, the report points at packing.
PACKING_HINT_SHARE = 0.25


def padding_share(lengths: np.ndarray, microbatch_size: int, orders: Iterable[Sequence[int]] | None = None) -> float:
    """The share of batch positions that are padding.

    Args:
        lengths: every sample's length in tokens.
        microbatch_size: rows per batch.
        orders: the sample indices each rank reads, in order (batches are consecutive
            runs of ``microbatch_size`` of them); default: one rank, the dataset's order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return 0.0
    padded = real = 0
    for order in orders if orders is not None else [range(len(lengths))]:
        rows = lengths[np.asarray(order, dtype=np.int64)]
        if len(rows) == 0:
            continue
        batches = -(-len(rows) // microbatch_size)
        grid = np.zeros(batches * microbatch_size, np.int64)
        grid[: len(rows)] = rows
        grid = grid.reshape(batches, microbatch_size)
        width = np.maximum(grid.max(axis=1), 2)  # as collate pads a batch
        count = np.full(batches, microbatch_size, np.int64)
        count[-1] = len(rows) - (batches - 1) * microbatch_size
        padded += int((width * count).sum())
        real += int(rows.sum())
    return (padded - real) / padded if padded else 0.0


def padding_line(share: float, microbatch_size: int, packing: bool, where: str = "") -> str:
    """One report line; from :data:`PACKING_HINT_SHARE` on it suggests ``data.packing_enable``."""
    line = (f"padding: {share:.1%} of the token positions in the training batches{where} "
            f"(microbatch_size {microbatch_size}; each batch is padded to its longest sample)")
    if share >= PACKING_HINT_SHARE and not packing:
        line += ("; samples of very different lengths share batches: data.packing_enable: true packs short "
                 "samples together (docs/config.md), or sort them with data.sort_by_length")
    return line


def sample_lengths(ds) -> np.ndarray:
    """Every sample's length, read from the Arrow column (no token is copied)."""
    import pyarrow.compute as pc

    parts = [pc.list_value_length(t.column("input_ids")).to_numpy(zero_copy_only=False)
             for t in ds.with_format("arrow").iter(batch_size=10_000)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
