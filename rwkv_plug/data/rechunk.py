"""Rechunking: one token stream per split, cut into samples of exactly N tokens.

Each document is followed by the separator tokens (mask 1) and the stream is
cut globally per split, carrying the tail of every batch into the next. So
unlike the reference (which dropped the tail of every map batch), the only
tokens lost are the final remainder (< N) of each split, which is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class RechunkResult:
    dataset: object  # datasets.Dataset
    chunks: int
    remainder: int  # tokens at the end of the split, fewer than N, not used


def join_documents(lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray,
                   sep: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents, each followed by ``sep`` (mask 1): vectorised."""
    k = len(sep)
    if k == 0:
        return ids, mask
    at = np.repeat(np.cumsum(lengths, dtype=np.int64), k)  # the end of each document
    out_ids = np.insert(ids, at, np.tile(np.asarray(sep, dtype=np.int32), len(lengths)))
    out_mask = np.insert(mask, at, np.ones(len(at), dtype=np.int8))
    return out_ids.astype(np.int32, copy=False), out_mask.astype(np.int8, copy=False)


def rechunk(ds, size: int, sep: Sequence[int], prefix_skip: int, path: str,
            batch_rows: int = 4096) -> RechunkResult:
    """Rechunk ``ds`` (columns input_ids, loss_mask) into ``path``; returns the new dataset."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets.arrow_writer import ArrowWriter
    from datasets.utils.tqdm import tqdm  # honours datasets.disable_progress_bars()

    from rwkv_plug.data.encode import sample_features

    carry_ids = np.empty(0, dtype=np.int32)
    carry_mask = np.empty(0, dtype=np.int8)
    chunks = 0
    writer = ArrowWriter(features=sample_features(), path=path)
    try:
        batches = ds.with_format("arrow").iter(batch_size=batch_rows)
        total = -(-len(ds) // batch_rows)
        for table in tqdm(batches, total=total, unit="batch", desc=f"rechunking to {size}"):
            col_ids = table.column("input_ids").combine_chunks()
            col_mask = table.column("loss_mask").combine_chunks()
            lengths = pc.list_value_length(col_ids).to_numpy(zero_copy_only=False).astype(np.int64)
            ids = pc.list_flatten(col_ids).to_numpy(zero_copy_only=False).astype(np.int32)
            mask = pc.list_flatten(col_mask).to_numpy(zero_copy_only=False).astype(np.int8)
            j_ids, j_mask = join_documents(lengths, ids, mask, sep)
            s_ids = np.concatenate([carry_ids, j_ids])
            s_mask = np.concatenate([carry_mask, j_mask])
            n = len(s_ids) // size
            cut = n * size
            carry_ids, carry_mask = s_ids[cut:].copy(), s_mask[cut:].copy()
            if n == 0:
                continue
            c_mask = s_mask[:cut].reshape(n, size).copy()
            if prefix_skip > 0:
                c_mask[:, :prefix_skip] = 0
            offsets = pa.array(np.arange(0, cut + 1, size, dtype=np.int32))
            writer.write_table(pa.table({
                "input_ids": pa.ListArray.from_arrays(offsets, pa.array(s_ids[:cut])),
                "loss_mask": pa.ListArray.from_arrays(offsets, pa.array(c_mask.reshape(-1))),
            }))
            chunks += n
        writer.finalize()
    finally:
        writer.close()
    out = datasets.Dataset.from_file(path)
    return RechunkResult(out, chunks, int(len(carry_ids)))
