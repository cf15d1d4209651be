"""Tokenising a split in this process, batch by batch, without ``datasets.map``.

The path for small sources and for tokenizers that keep every core busy from
their own threads (the world trie). A split comes as a Dataset, or as the
Arrow tables a parser yields while it goes on parsing (data/streamed.py). Batches are encoded one or two ahead in a
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


def encode_in_process(name: str, ds, fn: Encoder, output: "ChunkOutput | FileOutput") -> pa.Table:
    """Encode ``ds`` with ``fn``, feeding the kept samples to ``output`` (whose ``finish()``
    then gives the result); returns the table of _drop/_bad/_row for every source row.
    ``output`` is aborted if encoding fails."""
    n = len(ds)
    step = _step(ds.data.nbytes, len(ds.data), n)
    starts = range(0, n, step)
    # a strategy that reads Arrow slices gets them: no Python object per cell
    arrow = ds.with_format("arrow") if fn.arrow else None

    def jobs() -> Iterator[tuple[Callable, tuple]]:
        for start in starts:
            stop = min(n, start + step)
            indices = list(range(start, stop))
            if arrow is None:
                yield fn, (ds[start:stop], indices)
            else:
                yield fn.call_arrow, (arrow[start:stop], indices, lambda a=start, b=stop: ds[a:b])

    return _run(name, jobs(), len(starts), fn.flat and len(starts) > 1, output)


def encode_tables(name: str, tables: Iterator[pa.Table], fn: Encoder, output: "ChunkOutput | FileOutput",
                  rows: Callable[[pa.Table], dict], batch_bytes: int | None = None,
                  min_rows: int | None = None) -> pa.Table:
    """:func:`encode_in_process` of a split that arrives as Arrow tables (the source's
    rows in order, each table one batch, as a parser yields them): each is encoded
    while the next is taken from ``tables``. ``rows(table)`` gives a table's rows as
    ``datasets`` formats them, for a strategy that declines the Arrow path.
    ``batch_bytes`` and ``min_rows``: the size of an encoded batch in source bytes and
    its floor in rows (defaults: BATCH_BYTES and MIN_BATCH_ROWS, as encode_in_process)."""
    def jobs() -> Iterator[tuple[Callable, tuple]]:
        done = 0
        for table in tables:
            n = table.num_rows
            step = _step(table.nbytes, n, n, batch_bytes, min_rows)
            for start in range(0, n, step):
                part = table.slice(start, step)
                indices = list(range(done + start, done + start + part.num_rows))
                if fn.arrow:
                    yield fn.call_arrow, (part, indices, lambda t=part: rows(t))
                else:
                    yield fn, (rows(part), indices)
            done += n

    return _run(name, jobs(), None, fn.flat, output)


def _step(nbytes: int, table_rows: int, n: int, batch_bytes: int | None = None,
          min_rows: int | None = None) -> int:
    """Rows per batch: about ``batch_bytes`` (BATCH_BYTES) of source, at least ``min_rows``
    (MIN_BATCH_ROWS), at most ``n``."""
    batch_bytes = BATCH_BYTES if batch_bytes is None else batch_bytes
    min_rows = MIN_BATCH_ROWS if min_rows is None else min_rows
    per_row = max(1, nbytes // max(1, table_rows))
    return max(1, min(n, max(min_rows, batch_bytes // per_row)))


def _run(name: str, jobs: Iterator[tuple[Callable, tuple]], total: int | None, ahead: bool,
         output: "ChunkOutput | FileOutput") -> pa.Table:
    """Run each ``(call, args)`` of ``jobs`` in order, feeding the tables they return to
    ``output``; with ``ahead`` (the flat path tokenises without the GIL) a helper thread
    encodes up to two batches ahead while this thread feeds the previous one."""
    from datasets.utils.tqdm import tqdm  # honours datasets.disable_progress_bars()

    status: list[pa.Table] = []
    pool = ThreadPoolExecutor(1) if ahead else None
    try:
        for table in tqdm(_encoded(jobs, pool), total=total, unit="batch", desc=f"tokenising {name}"):
            status.append(table.select(["_drop", "_bad", "_row"]))
            output.feed(table)
    except BaseException:
        output.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return pa.concat_tables(status) if status else _empty_status()


def _encoded(jobs: Iterator[tuple[Callable, tuple]], pool: ThreadPoolExecutor | None) -> Iterator[pa.Table]:
    """The tables of ``jobs``, in order; with a ``pool``, two more are kept queued in it
    while the caller takes one, so it starts the next the moment one is done."""
    queue: deque = deque()
    for call, args in jobs:
        queue.append(pool.submit(call, *args) if pool is not None else call(*args))
        if len(queue) <= (2 if pool is not None else 0):
            continue
        table = queue.popleft()
        yield table.result() if pool is not None else table
    while queue:
        table = queue.popleft()
        yield table.result() if pool is not None else table


class ChunkOutput:
    """Kept samples fed straight to the rechunker; ``finish()`` gives its ``RechunkResult``."""

    def __init__(self, name: str, cfg: Mapping[str, Any], work, rechunk: tuple[int, list[int]],
                 hold: Callable[[int], int] | None = None) -> None:
        from rwkv_plug.data.options import as_data_config
        from rwkv_plug.data.rechunk import Rechunker

        size, sep = rechunk
        skip = as_data_config(cfg).data_prefix_skip_mask or 0
        # with hold, chunks go to the file as they are cut (see Rechunker)
        self._sink = Rechunker(size, sep, int(skip), str(work / f"rechunk-{name}.arrow"), hold)

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


class FileOutput:
    """Kept samples written to an Arrow file; ``finish()`` opens it as a Dataset."""

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
