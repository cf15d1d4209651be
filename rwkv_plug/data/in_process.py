"""Tokenising a split in this process, batch by batch, without ``datasets.map``.

The path for small sources and for tokenizers that keep every core busy from
their own threads (the world trie). Batches are encoded one or two ahead in a
helper thread (the flat path releases the GIL) while this thread hands the
previous one to the output: straight to the rechunker when documents are
rechunked, else to an Arrow file. No intermediate file of unchunked samples
is written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from rwkv_plug.data.encode import Encoder, sample_features

#: Source bytes per batch: big enough that per-batch costs vanish and the
#: tokenizer's threads stay busy, small enough for memory.
BATCH_BYTES = 8 << 20
MIN_BATCH_ROWS = 256


def encode_in_process(name: str, ds, fn: Encoder, cfg: Mapping[str, Any], work, rechunk=None):
    """Encode ``ds`` with ``fn``; returns ``(Dataset or RechunkResult, table of
    _drop/_bad/_row for every source row)``.

    Kept samples go to the rechunker when ``rechunk`` is ``(size, separator
    ids)``, else to ``work/encoded-<name>.arrow``.
    """
    from datasets.utils.tqdm import tqdm  # honours datasets.disable_progress_bars()

    n = len(ds)
    per_row = max(1, ds.data.nbytes // max(1, len(ds.data)))
    step = max(1, min(n, max(MIN_BATCH_ROWS, BATCH_BYTES // per_row)))
    starts = range(0, n, step)
    output = _ChunkOutput(name, cfg, work, rechunk) if rechunk is not None else _FileOutput(name, work)
    status: list[pa.Table] = []
    # The flat path tokenises without the GIL: encode ahead in a helper thread.
    pool = ThreadPoolExecutor(1) if fn.flat and len(starts) > 1 else None
    try:
        batches = _encoded_batches(ds, fn, starts, step, pool)
        for table in tqdm(batches, total=len(starts), unit="batch", desc=f"tokenising {name}"):
            status.append(table.select(["_drop", "_bad", "_row"]))
            output.feed(table)
        result = output.finish()
    except BaseException:
        output.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return result, pa.concat_tables(status) if status else _empty_status()


def _encoded_batches(ds, fn: Encoder, starts: range, step: int, pool: ThreadPoolExecutor | None) -> Iterator[pa.Table]:
    """The encoded tables of the batches at ``starts``, in order; with a ``pool``, two are
    kept queued in it so it starts the next the moment one is done."""
    n = len(ds)
    # a strategy that reads Arrow slices gets them: no Python object per cell
    arrow = ds.with_format("arrow") if callable(getattr(fn.strategy, "encode_arrow", None)) else None

    def encode(start: int) -> Any:
        stop = min(n, start + step)
        indices = list(range(start, stop))
        if arrow is None:
            call: Callable = fn
            args: tuple = (ds[start:stop], indices)
        else:
            call, args = fn.call_arrow, (arrow[start:stop], indices, lambda: ds[start:stop])
        return pool.submit(call, *args) if pool is not None else call(*args)

    queue: deque = deque()
    queued = 0

    def fill() -> None:
        nonlocal queued
        while queued < len(starts) and len(queue) < (2 if pool is not None else 1):
            queue.append(encode(starts[queued]))
            queued += 1

    fill()
    while queue:
        table = queue.popleft()
        table = table.result() if pool is not None else table
        fill()  # the helper goes on while the caller writes this batch
        yield table


class _ChunkOutput:
    """Kept samples fed straight to the rechunker."""

    def __init__(self, name: str, cfg: Mapping[str, Any], work, rechunk: tuple[int, list[int]]) -> None:
        from rwkv_plug.data.rechunk import Rechunker

        size, sep = rechunk
        self._sink = Rechunker(size, sep, int(cfg.get("data_prefix_skip_mask") or 0), str(work / f"rechunk-{name}.arrow"))

    def feed(self, table: pa.Table) -> None:
        import pyarrow.compute as pc

        keep = pc.equal(table.column("_drop"), "").to_numpy(zero_copy_only=False)
        ids = table.column("input_ids").combine_chunks()
        mask = table.column("loss_mask").combine_chunks()
        lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
        self._sink.feed(lengths[keep], pc.list_flatten(ids).to_numpy(zero_copy_only=False),
                        pc.list_flatten(mask).to_numpy(zero_copy_only=False))

    def finish(self):
        return self._sink.finish()

    def abort(self) -> None:
        self._sink.abort()


class _FileOutput:
    """Kept samples written to an Arrow file, opened as a Dataset at the end."""

    def __init__(self, name: str, work) -> None:
        from datasets.arrow_writer import ArrowWriter

        self._path = str(work / f"encoded-{name}.arrow")
        self._writer = ArrowWriter(features=sample_features(), path=self._path)

    def feed(self, table: pa.Table) -> None:
        import pyarrow.compute as pc

        self._writer.write_table(table.filter(pc.equal(table.column("_drop"), "")).select(["input_ids", "loss_mask"]))

    def finish(self):
        import datasets

        self._writer.finalize()
        self._writer.close()
        return datasets.Dataset.from_file(self._path)

    def abort(self) -> None:
        self._writer.close()


def _empty_status() -> pa.Table:
    return pa.table({"_drop": pa.array([], pa.string()), "_bad": pa.array([], pa.bool_()),
                     "_row": pa.array([], pa.int64())})
