"""Packing: short train samples merged into longer ones, so a step trains more tokens.

Each packed sample gets a length cap when it is opened: its first record's
length (at least ``min_ctx``) rounded up to a multiple of ``chunk``. A record
of length ``L`` joins the first open sample where ``fill + 1 + L < cap`` (the
earlier trainer's strict rule, so a packed sample has at most ``cap - 1``
tokens), after a separator token 0 with mask 1, so the model learns where a
record ends. Otherwise it opens a new sample; a record longer than any cap
stays alone and is never split. The state carries across the records of a
packed sample, as in the earlier trainer.

Unlike the earlier trainer, packing does not stop at map-batch boundaries and
does not scan every sample opened so far: the ``WINDOW`` most recently opened
samples are the candidates, which keeps it linear in the number of records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rwkv_plug.core.errors import DataError

#: Open packed samples a record may join (the oldest is closed when a new one opens).
WINDOW = 256
#: The token between two packed records (learned: it marks a record's end).
SEPARATOR = 0
#: Seed of the shuffle before packing when ``packing_in_sequence`` is off (the earlier trainer's).
SHUFFLE_SEED = 101


@dataclass
class PackResult:
    dataset: object  # datasets.Dataset
    records: int
    samples: int


def assign(lengths: np.ndarray, chunk: int, min_ctx: int, window: int = WINDOW) -> np.ndarray:
    """The packed sample of each record (records in order; sample numbers in opening order)."""
    bins = np.empty(len(lengths), dtype=np.int64)
    fills = np.zeros(window, dtype=np.int64)
    caps = np.zeros(window, dtype=np.int64)
    ids = np.zeros(window, dtype=np.int64)  # sample number of each open slot
    open_count = opened = 0
    for i, n in enumerate(lengths.tolist()):
        fits = np.flatnonzero(fills[:open_count] + 1 + n < caps[:open_count])
        if len(fits):
            slot = int(fits[0])
            fills[slot] += 1 + n
            bins[i] = ids[slot]
            continue
        if open_count == window:  # close the oldest open sample
            fills[:-1], caps[:-1], ids[:-1] = fills[1:], caps[1:], ids[1:]
            open_count -= 1
        fills[open_count] = n
        caps[open_count] = -(-max(n, min_ctx) // chunk) * chunk
        ids[open_count] = opened
        bins[i] = opened
        open_count += 1
        opened += 1
    return bins


def pack(ds, chunk: int, min_ctx: int, in_sequence: bool) -> PackResult:
    """Pack the rows of ``ds`` (input_ids, loss_mask) as the module docstring says."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from rwkv_plug.data.encode import in_memory_samples

    if not in_sequence:
        ds = ds.shuffle(seed=SHUFFLE_SEED)
    table = ds.with_format("arrow")[:]
    col_ids = table.column("input_ids").combine_chunks()
    col_mask = table.column("loss_mask").combine_chunks()
    lengths = pc.list_value_length(col_ids).to_numpy(zero_copy_only=False).astype(np.int64)
    ids = pc.list_flatten(col_ids).to_numpy(zero_copy_only=False).astype(np.int32)
    mask = pc.list_flatten(col_mask).to_numpy(zero_copy_only=False).astype(np.int8)
    bins = assign(lengths, chunk, max(1, min_ctx))
    out_ids, out_mask, offsets = _assemble(lengths, ids, mask, bins)
    if offsets[-1] >= 2**31:
        raise DataError(f"the train split has {offsets[-1]} tokens with separators, too many to pack in one "
                        "piece; turn data.packing_enable off, or split the source")
    offsets_arr = pa.array(offsets.astype(np.int32))
    packed = pa.table({
        "input_ids": pa.ListArray.from_arrays(offsets_arr, pa.array(out_ids)),
        "loss_mask": pa.ListArray.from_arrays(offsets_arr, pa.array(out_mask)),
    })
    return PackResult(in_memory_samples(packed), len(lengths), len(offsets) - 1)


def _assemble(lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray,
              bins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat ids and mask of the packed samples, and their offsets.

    One slice copy per record: index arrays as long as the token stream would
    cost more time and memory than the copies.
    """
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    order = np.argsort(bins, kind="stable")  # records of each sample, in their original order
    first = np.ones(len(order), dtype=bool)
    first[1:] = bins[order][1:] != bins[order][:-1]
    size = lengths[order] + ~first  # a separator before every record but a sample's first
    out_start = np.zeros(len(order), dtype=np.int64)
    np.cumsum(size[:-1], out=out_start[1:])
    total = int(size.sum())
    out_ids = np.full(total, SEPARATOR, dtype=np.int32)
    out_mask = np.ones(total, dtype=np.int8)  # separators are learned
    src_at, n_of = starts.tolist(), lengths.tolist()
    for record, dst in zip(order.tolist(), (out_start + ~first).tolist()):
        src, n = src_at[record], n_of[record]
        out_ids[dst:dst + n] = ids[src:src + n]
        out_mask[dst:dst + n] = mask[src:src + n]
    sample_ends = np.append(out_start[first][1:], total)
    return out_ids, out_mask, np.concatenate([[0], sample_ends]).astype(np.int64)
