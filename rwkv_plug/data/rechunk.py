"""Rechunking: one token stream per split, cut into samples of exactly N tokens.

Each document is followed by the separator tokens (mask 1) and the stream is
cut globally per split, carrying the tail of every batch into the next. So
unlike the reference (which dropped the tail of every map batch), the only
tokens lost are the final remainder (< N) of each split, which is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np


@dataclass
class RechunkResult:
    chunks: int
    remainder: int  # tokens at the end of the split, fewer than N, not used
    #: per chunk, in order: its trained tokens (mask sum less the first token's bit) and
    #: largest id, so the split statistics need no pass over the saved tokens
    trained: np.ndarray
    top_ids: np.ndarray
    #: the finished Arrow file that holds the first ``file_rows`` chunks; None when all
    #: are in ``memory`` (a pa.Table)
    file: str | None = None
    file_rows: int = 0
    #: the finished Arrow file of the chunks kept back (the last ``chunks - file_rows``),
    #: when there is a ``file`` and any were kept back; None otherwise
    rest_file: str | None = None
    memory: Any = None

    @cached_property
    def dataset(self) -> Any:
        """All the chunks as one ``datasets.Dataset``."""
        from datasets.table import MemoryMappedTable, concat_tables

        from rwkv_plug.data.encode import in_memory_samples

        if self.file is None:
            return in_memory_samples(self.memory)
        if self.rest_file is None:
            return _mapped(MemoryMappedTable.from_file(self.file))
        return _mapped(concat_tables([MemoryMappedTable.from_file(self.file),
                                      MemoryMappedTable.from_file(self.rest_file)]))

    def parts(self) -> tuple[Any, Any]:
        """The chunks of ``file`` and those of ``rest_file``, each a ``datasets.Dataset``
        (the rows ``dataset.select`` would take for them, without the select)."""
        from datasets.table import MemoryMappedTable

        assert self.file is not None and self.rest_file is not None
        return (_mapped(MemoryMappedTable.from_file(self.file)),
                _mapped(MemoryMappedTable.from_file(self.rest_file)))


def _mapped(table: Any) -> Any:
    """A Dataset of samples over ``table`` (memory-mapped chunks), as ``Dataset.from_file``
    gives but with a random fingerprint: datasets' own hashes its arguments (milliseconds,
    at the end of the build, for a name no cache uses)."""
    import uuid

    import datasets

    from rwkv_plug.data.encode import sample_features

    return datasets.Dataset(table, info=datasets.DatasetInfo(features=sample_features()),
                            fingerprint=uuid.uuid4().hex)


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


class Rechunker:
    """Streaming rechunk: :meth:`feed` documents batch by batch, then :meth:`finish`.

    The cut is global, so how the documents are batched does not change the chunks.

    With ``hold`` (``hold(chunks so far)``: how many of the last chunks a test split cut
    from the end takes), every other chunk goes to ``path`` as soon as it is cut, so the
    file is written while tokenising goes on and can itself become the saved train
    split (see data/in_place.py) instead of being copied by the save; the chunks kept
    back go to a second file at :meth:`finish`, which can become the saved test split.
    """

    #: Chunks are kept in memory up to this many bytes (the final save then
    #: writes them once); beyond it they go to ``path``.
    MEMORY_BYTES = 256 << 20

    def __init__(self, size: int, sep: Sequence[int], prefix_skip: int, path: str,
                 hold: Callable[[int], int] | None = None) -> None:
        self.size, self.sep, self.prefix_skip, self.path, self.hold = size, sep, prefix_skip, path, hold
        self.carry_ids = np.empty(0, dtype=np.int32)
        self.carry_mask = np.empty(0, dtype=np.int8)
        self.chunks = 0
        self.held: list[Any] = []  # pa.Table batches not written yet
        self.held_bytes = 0
        self.writer: Any = None
        self.file_rows = 0  # chunks written to path
        self.trained: list[np.ndarray] = []  # per chunk, batch by batch (RechunkResult.trained)
        self.top_ids: list[np.ndarray] = []

    def _write(self, table: Any) -> None:
        if self.hold is not None:
            self._write_through(table)
            return
        if self.writer is None and self.held_bytes + table.nbytes <= self.MEMORY_BYTES:
            self.held.append(table)
            self.held_bytes += table.nbytes
            return
        for held in self.held:
            self._to_file(held)
        self.held = []
        self._to_file(table)

    def _to_file(self, table: Any) -> None:
        if self.writer is None:
            self.writer = _writer(self.path)
        self.writer.write_table(table)
        self.file_rows += table.num_rows

    def _write_through(self, table: Any) -> None:
        """``table`` (the newest chunks) to the file, less the last ``hold(chunks)`` chunks cut so far."""
        self.held.append(table)
        keep = min(self.chunks, max(0, int(self.hold(self.chunks))))
        if keep * self.size * 5 > self.MEMORY_BYTES:  # int32 id + int8 mask per token
            self.hold, keep = (lambda _n: 0), 0  # too many to keep in memory: the save copies
        out = sum(t.num_rows for t in self.held) - keep
        rest = []
        for t in self.held:  # table by table: the writer would copy a table of several chunks
            if out >= t.num_rows:
                self._to_file(t)
            elif out > 0:
                self._to_file(t.slice(0, out))
                rest.append(t.slice(out))
            else:
                rest.append(t)
            out -= t.num_rows
        self.held = rest

    def feed(self, lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> None:
        """Documents back to back: ``lengths`` per document, ``ids``/``mask`` flat."""
        import pyarrow as pa

        size = self.size
        s_ids, s_mask = self._stream(lengths, ids, mask)
        n = len(s_ids) // size
        cut = n * size
        self.carry_ids, self.carry_mask = s_ids[cut:].copy(), s_mask[cut:].copy()
        if n == 0:
            return
        c_mask = s_mask[:cut]  # s_mask is a fresh array, safe to edit
        if self.prefix_skip > 0:
            c_mask.reshape(n, size)[:, :self.prefix_skip] = 0
        rows_mask = c_mask.reshape(n, size)  # a sample's first token is never a target
        # int32 sums (a chunk is far below 2**31 / 127 tokens) take half the time of int64 ones
        self.trained.append(rows_mask.sum(axis=1, dtype=np.int32).astype(np.int64) - rows_mask[:, 0])
        self.top_ids.append(s_ids[:cut].reshape(n, size).max(axis=1))
        offsets = pa.array(np.arange(0, cut + 1, size, dtype=np.int32))
        self.chunks += n
        self._write(pa.table({
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(s_ids[:cut])),
            "loss_mask": pa.ListArray.from_arrays(offsets, pa.array(c_mask)),
        }))

    #: Up to this many documents per batch are copied one by one into the
    #: stream; more take the vectorised join_documents (whose index arrays cost
    #: more than a short loop).
    LOOP_DOCS = 4096

    def _stream(self, lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The carried tail followed by the batch's documents, each with the
        separator: fresh arrays (the caller edits the mask)."""
        sep, carry = self.sep, len(self.carry_ids)
        if len(sep) and len(lengths) > self.LOOP_DOCS:
            j_ids, j_mask = join_documents(lengths, ids, mask, sep)
            return np.concatenate([self.carry_ids, j_ids]), np.concatenate([self.carry_mask, j_mask])
        k = len(sep)
        total = carry + len(ids) + k * len(lengths)
        s_ids = np.empty(total, dtype=np.int32)
        s_mask = np.ones(total, dtype=np.int8)  # separators are learned
        s_ids[:carry], s_mask[:carry] = self.carry_ids, self.carry_mask
        if k == 0:
            s_ids[carry:], s_mask[carry:] = ids, mask
            return s_ids, s_mask
        sep_ids = np.asarray(sep, dtype=np.int32)
        src, dst = 0, carry
        for n in lengths.tolist():
            s_ids[dst:dst + n] = ids[src:src + n]
            s_mask[dst:dst + n] = mask[src:src + n]
            s_ids[dst + n:dst + n + k] = sep_ids
            src, dst = src + n, dst + n + k
        return s_ids, s_mask

    def finish(self) -> RechunkResult:
        import pyarrow as pa

        from rwkv_plug.data.encode import sample_features

        done = RechunkResult(self.chunks, int(len(self.carry_ids)),
                             np.concatenate(self.trained) if self.trained else np.zeros(0, np.int64),
                             np.concatenate(self.top_ids) if self.top_ids else np.zeros(0, np.int32))
        if self.writer is None:
            done.memory = pa.concat_tables(self.held) if self.held else sample_features().arrow_schema.empty_table()
            return done
        try:
            self.writer.finalize()
        finally:
            self.writer.close()
        done.file, done.file_rows = self.path, self.file_rows
        if self.held:  # those kept back for the test split go to a file of their own
            done.rest_file = _rest_path(self.path)
            writer = _writer(done.rest_file)
            try:
                for table in self.held:
                    writer.write_table(table)
                writer.finalize()
            finally:
                writer.close()
        return done

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _writer(path: str) -> Any:
    """An Arrow file writer for samples, as ``datasets`` writes a split's file."""
    from datasets.arrow_writer import ArrowWriter

    from rwkv_plug.data.encode import sample_features

    return ArrowWriter(features=sample_features(), path=path)


def _rest_path(path: str) -> str:
    """The file of the chunks kept back, next to ``path``: ``x.arrow`` -> ``x-rest.arrow``."""
    stem = path[:-len(".arrow")] if path.endswith(".arrow") else path
    return f"{stem}-rest.arrow"


def rechunk(ds, size: int, sep: Sequence[int], prefix_skip: int, path: str,
            batch_rows: int = 4096) -> RechunkResult:
    """Rechunk ``ds`` (columns input_ids, loss_mask) into ``path``; returns the new dataset."""
    import pyarrow.compute as pc
    from datasets.utils.tqdm import tqdm  # honours datasets.disable_progress_bars()

    out = Rechunker(size, sep, prefix_skip, path)
    try:
        batches = ds.with_format("arrow").iter(batch_size=batch_rows)
        total = -(-len(ds) // batch_rows)
        for table in tqdm(batches, total=total, unit="batch", desc=f"rechunking to {size}"):
            col_ids = table.column("input_ids").combine_chunks()
            col_mask = table.column("loss_mask").combine_chunks()
            lengths = pc.list_value_length(col_ids).to_numpy(zero_copy_only=False).astype(np.int64)
            ids = pc.list_flatten(col_ids).to_numpy(zero_copy_only=False).astype(np.int32)
            mask = pc.list_flatten(col_mask).to_numpy(zero_copy_only=False).astype(np.int8)
            out.feed(lengths, ids, mask)
    except BaseException:
        out.abort()
        raise
    return out.finish()
