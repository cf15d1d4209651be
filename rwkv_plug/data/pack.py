"""Packing: short train samples merged into longer ones, so a step trains more tokens.

Each packed sample gets a length cap when it is opened: its first record's
length (at least ``min_ctx``) rounded up to a multiple of ``chunk``. A record
that fits joins the first open sample it fits in; otherwise it opens a new
sample; a record longer than any cap stays alone and is never split. How a
record is laid out depends on ``data.packing_state``:

* ``reset`` (the default): every record starts from the fresh state, exactly as
  if trained alone. A record starts at the next multiple of ``align`` (the
  kernels reset the state at the start of one of their chunks), after padding
  (id 0, mask 0); a record of length ``L`` fits where that start plus ``L`` is at
  most the cap. There is no separator, and a record's first token has mask 0 (it
  is never a target when the record is trained alone). The samples get a
  ``record_starts`` column: the offset of each of their records.
* ``carry`` (the earlier trainer's): a record of length ``L`` joins where
  ``fill + 1 + L < cap`` (so a packed sample has at most ``cap - 1`` tokens),
  after a separator token 0 with mask 1, so the model learns where a record
  ends. The state carries across the records of a packed sample.

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
#: The column of reset-packed samples: the offset of each of their records.
RECORD_STARTS = "record_starts"
#: ``data.packing_state`` values.
PACKING_STATES = ("reset", "carry")
#: Seed of the shuffle before packing when ``packing_in_sequence`` is off (the earlier trainer's).
SHUFFLE_SEED = 101


@dataclass
class PackResult:
    dataset: object  # datasets.Dataset
    records: int
    samples: int


def assign(lengths: np.ndarray, chunk: int, min_ctx: int, window: int = WINDOW,
           align: int | None = None) -> np.ndarray:
    """The packed sample of each record (records in order; sample numbers in opening order).

    ``align`` None: the carry layout (a separator before each joining record, strict cap);
    else the reset layout (each record at a multiple of ``align``, cap included).
    """
    bins = np.empty(len(lengths), dtype=np.int64)
    fills = np.zeros(window, dtype=np.int64)
    caps = np.zeros(window, dtype=np.int64)
    ids = np.zeros(window, dtype=np.int64)  # sample number of each open slot
    open_count = opened = 0
    for i, n in enumerate(lengths.tolist()):
        if align is None:
            ends = fills[:open_count] + 1 + n
            fits = np.flatnonzero(ends < caps[:open_count])
        else:
            ends = -(-fills[:open_count] // align) * align + n
            fits = np.flatnonzero(ends <= caps[:open_count])
        if len(fits):
            slot = int(fits[0])
            fills[slot] = ends[slot]
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


def pack(ds, chunk: int, min_ctx: int, in_sequence: bool, state: str = "reset", align: int = 32) -> PackResult:
    """Pack the rows of ``ds`` (input_ids, loss_mask) as the module docstring says.

    ``state``: ``reset`` or ``carry`` (``data.packing_state``); ``align``: ``data.packing_align``.
    """
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
    reset = state == "reset"
    bins = assign(lengths, chunk, max(1, min_ctx), align=align if reset else None)
    if reset:
        out_ids, out_mask, offsets, starts, counts = _assemble_aligned(lengths, ids, mask, bins, align)
    else:
        out_ids, out_mask, offsets = _assemble(lengths, ids, mask, bins)
    if offsets[-1] >= 2**31:
        raise DataError(f"the train split has {offsets[-1]} tokens with separators or padding, too many to pack "
                        "in one piece; turn data.packing_enable off, or split the source")
    offsets_arr = pa.array(offsets.astype(np.int32))
    columns = {
        "input_ids": pa.ListArray.from_arrays(offsets_arr, pa.array(out_ids)),
        "loss_mask": pa.ListArray.from_arrays(offsets_arr, pa.array(out_mask)),
    }
    if reset:
        count_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        columns[RECORD_STARTS] = pa.ListArray.from_arrays(pa.array(count_offsets), pa.array(starts))
    table = pa.table(columns)
    return PackResult(_with_starts(table) if reset else in_memory_samples(table), len(lengths), len(offsets) - 1)


def _with_starts(table):
    """A ``datasets.Dataset`` over reset-packed samples (``in_memory_samples`` plus ``record_starts``)."""
    import uuid

    import datasets

    from rwkv_plug.data.encode import sample_features

    features = sample_features()
    features[RECORD_STARTS] = datasets.List(datasets.Value("int32"))
    return datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=uuid.uuid4().hex,
                            info=datasets.DatasetInfo(features=features))


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


def _assemble_aligned(lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray, bins: np.ndarray, align: int):
    """The reset layout: flat ids and mask, sample offsets, and each sample's record starts
    (flat int32, in sample order) with their count per sample."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    order = np.argsort(bins, kind="stable")  # records of each sample, in their original order
    first = np.ones(len(order), dtype=bool)
    first[1:] = bins[order][1:] != bins[order][:-1]
    # each record's offset inside its sample: the previous record's end rounded up to ``align``
    at = np.zeros(len(order), dtype=np.int64)
    sample_len: list[int] = []
    end = 0
    for j, (record, new) in enumerate(zip(order.tolist(), first.tolist())):
        if new:
            if j:
                sample_len.append(end)
            pos = 0
        else:
            pos = -(-end // align) * align
        at[j] = pos
        end = pos + int(lengths[record])
    sample_len.append(end)
    sample_start = np.concatenate([[0], np.cumsum(sample_len)]).astype(np.int64)
    total = int(sample_start[-1])
    out_ids = np.zeros(total, dtype=np.int32)  # padding: id 0, mask 0
    out_mask = np.zeros(total, dtype=np.int8)
    sample_of = np.cumsum(first) - 1
    src_at, n_of = starts.tolist(), lengths.tolist()
    for record, s, pos in zip(order.tolist(), sample_of.tolist(), at.tolist()):
        src, n, dst = src_at[record], n_of[record], int(sample_start[s]) + pos
        out_ids[dst:dst + n] = ids[src:src + n]
        out_mask[dst:dst + n] = mask[src:src + n]
        if n:
            out_mask[dst] = 0  # a record's first token is never a target when it is trained alone
    counts = np.bincount(sample_of, minlength=len(sample_len))
    return out_ids, out_mask, sample_start, at.astype(np.int32), counts
