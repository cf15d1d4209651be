"""Rows -> samples: the strategy, the prefix-skip mask and the per-document filters.

One batched ``datasets.map`` does all of it, so every source row yields one
output row that says either "keep" or why it was dropped (``_drop``), and
which source row it was (``_row``). The summary counts those afterwards;
nothing is dropped without a reason on record.

Fast paths: a strategy whose ``fast_paths()`` names ``"flat"`` gives a batch
as one :class:`~rwkv_plug.core.interfaces.FlatSamples` (``encode_flat``, or
``encode_arrow`` from Arrow buffers); the filters then run on whole arrays
and no Python object is made per token. They must give the same table as
the per-row path (``tests/data/test_data_flat.py``). When a fast path
raises, the batch is encoded the slow way and a warning says so, once per
strategy and path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from rwkv_plug.core.errors import DataError
from rwkv_plug.core.interfaces import BadRow, FlatSamples, Sample, Strategy, Tokenizer
from rwkv_plug.core.notice import warn_once

FILTER_TOO_SHORT = "1 token or less (nothing to learn)"
FILTER_NO_MASK = "no trained tokens (all-zero loss mask)"


class StrategyFailed(DataError):
    """A strategy raised on a source row; ``row`` (0-based) lets the caller add its ``file:line``."""

    def __init__(self, message: str, row: int) -> None:
        super().__init__(message)
        self.row = row

    def __reduce__(self):  # raised in a worker process, it travels back pickled
        return type(self), (self.args[0], self.row)


def encoded_features():
    import datasets

    return datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "loss_mask": datasets.List(datasets.Value("int8")),
        "_drop": datasets.Value("string"),
        "_bad": datasets.Value("bool"),
        "_row": datasets.Value("int64"),
    })


def sample_features():
    import datasets

    return datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "loss_mask": datasets.List(datasets.Value("int8")),
    })


def in_memory_samples(table: pa.Table):
    """A ``datasets.Dataset`` over an Arrow table of samples (input_ids, loss_mask), without a copy.

    The fingerprint is given up front: ``datasets`` would otherwise hash every token.
    """
    import uuid

    import datasets

    return datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=uuid.uuid4().hex,
                            info=datasets.DatasetInfo(features=sample_features()))


def filter_reason(ids: np.ndarray, mask: np.ndarray, min_size: int, max_size: int,
                  first_is_context: bool = True) -> str:
    """Why a document is dropped before rechunking, or "" to keep it.

    ``first_is_context``: the document is a sample of its own, so its first token is
    never a target (off when documents are rechunked into one stream, where the first
    token follows the previous document's separator and is learned).
    """
    n = len(ids)
    if n <= 1:
        return FILTER_TOO_SHORT
    if min_size > 0 and n < min_size:
        return f"shorter than min_token_size ({min_size})"
    if max_size > 0 and n > max_size:
        return f"longer than max_token_size ({max_size})"
    if not (mask[1:] if first_is_context else mask).any():
        return FILTER_NO_MASK
    return ""


def _mask_array(mask, n: int) -> np.ndarray:
    # all-ones masks (text) are the common case: skip the per-token conversion
    if isinstance(mask, list) and mask.count(0) == 0:
        return np.ones(n, dtype=np.int8)
    return np.array(mask, dtype=np.int8)


def with_threads(tokenizer: Tokenizer, threads: int | None) -> Tokenizer:
    """``tokenizer.with_threads(threads)``; ``tokenizer`` itself when ``threads`` is None."""
    return tokenizer if threads is None else tokenizer.with_threads(threads)


def fell_back(strategy: Strategy, path: str, slower: str, exc: BaseException) -> None:
    """Say, once per strategy and path in this process, that ``path`` failed and ``slower``
    encoded the batch instead."""
    first = (str(exc).strip().splitlines() or [""])[0]
    warn_once(("fell back", strategy.name, path),
              f"strategy '{strategy.name}': {path} failed ({type(exc).__name__}: {first}); encoded with "
              f"{slower} instead (same samples, slower)")


class Encoder:
    """The picklable batch function given to ``datasets.map``.

    Workers rebuild the tokenizer from its spec (``load_tokenizer``) rather
    than unpickling a possibly large tokenizer object. ``threads`` is how
    many threads a threaded tokenizer may use (``num_proc`` in this
    process, 1 in each of ``num_proc`` worker processes).
    """

    def __init__(self, strategy_cls: type[Strategy], cfg: Mapping[str, Any],
                 tokenizer: Tokenizer, row_offset: int = 0, rechunking: bool = False,
                 threads: int | None = None) -> None:
        from rwkv_plug.data.options import as_data_config

        self.strategy_cls = strategy_cls
        self.cfg = as_data_config(cfg)
        self.row_offset = row_offset
        #: documents become one stream (then a document's first token is a target too)
        self.rechunking = rechunking
        self.threads = threads
        self._tokenizer: Tokenizer | None = with_threads(tokenizer, threads)
        self._strategy: Strategy | None = None
        _ = self.strategy  # build it here, so option errors surface before any worker starts

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tokenizer"] = None
        state["_strategy"] = None
        return state

    @property
    def strategy(self) -> Strategy:
        if self._strategy is None:
            if self._tokenizer is None:
                from rwkv_plug.data.tokenizer import load_tokenizer

                self._tokenizer = with_threads(load_tokenizer(self.cfg.tokenizer, self.cfg), self.threads)
            self._strategy = self.strategy_cls(self.cfg, self._tokenizer)
        return self._strategy

    @property
    def tokenizer(self) -> Tokenizer:
        return self.strategy.tokenizer

    @property
    def flat(self) -> bool:
        """Whether the strategy declares the flat fast path (``encode_flat``)."""
        return "flat" in self.strategy.fast_paths()

    @property
    def arrow(self) -> bool:
        """Whether batches go to the strategy as Arrow tables (``encode_arrow``): it declares
        that path and the flat one, and its tokenizer reads Arrow string bytes itself."""
        return self.flat and "arrow" in self.strategy.fast_paths() and self.tokenizer.reads_spans

    def _limits(self) -> tuple[int, int, int]:
        cfg = self.cfg
        return int(cfg.data_prefix_skip_mask or 0), int(cfg.min_token_size or -1), int(cfg.max_token_size or -1)

    def __call__(self, batch: dict[str, list], indices: list[int]) -> pa.Table:
        names = list(batch)
        rows = [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]
        if self.flat:
            try:
                flat = self.strategy.encode_flat(rows)
            except (BadRow, DataError):
                raise
            except Exception as exc:  # the generic path finds and names a failing row, else says so
                table = self._rows_table(rows, indices)
                fell_back(self.strategy, "encode_flat", "encode_batch", exc)
                return table
            if flat is not None:
                return self._table_from_flat(flat, indices)
        return self._rows_table(rows, indices)

    def _rows_table(self, rows: list[dict], indices: list[int]) -> pa.Table:
        """The table of ``rows`` encoded as samples (``encode_batch``), filtered row by row."""
        results = self._encode(rows, indices)
        skip, min_size, max_size = self._limits()
        ids_out: list[np.ndarray] = []
        mask_out: list[np.ndarray] = []
        drop: list[str] = []
        bad: list[bool] = []
        lengths: list[int] = []  # 0 for dropped rows: they need not be stored
        for res in results:
            if isinstance(res, BadRow):
                drop.append(str(res) or "bad row")
                bad.append(True)
                lengths.append(0)
                continue
            ids = np.array(res.input_ids, dtype=np.int32)
            mask = _mask_array(res.loss_mask, len(ids))
            if skip > 0:
                mask[:skip] = 0
            reason = filter_reason(ids, mask, min_size, max_size, first_is_context=not self.rechunking)
            drop.append(reason)
            bad.append(False)
            lengths.append(0 if reason else len(ids))
            if not reason:
                ids_out.append(ids)
                mask_out.append(mask)
        flat_ids = np.concatenate(ids_out) if ids_out else np.zeros(0, np.int32)
        flat_mask = np.concatenate(mask_out) if mask_out else np.zeros(0, np.int8)
        return self._table(np.asarray(lengths, dtype=np.int64), flat_ids, flat_mask, drop, bad, indices)

    def call_arrow(self, table: pa.Table, indices: list[int], batch: Callable[[], dict]) -> pa.Table:
        """``self(batch(), indices)``, where ``table`` holds the same rows in Arrow form.

        With :attr:`arrow`, the strategy reads the table's buffers directly;
        when it declines, ``batch()`` gives the rows as ``datasets`` formats
        them and ``__call__`` runs.
        """
        if self.arrow:
            try:
                flat = self.strategy.encode_arrow(table)
            except (BadRow, DataError):
                raise
            except Exception as exc:  # __call__ below finds and names a failing row
                fell_back(self.strategy, "encode_arrow", "encode_flat", exc)
                flat = None
            if flat is not None:
                return self._table_from_flat(flat, indices)
        return self(batch(), indices)

    def _table(self, lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray, drop: list[str],
               bad: list[bool], indices: list[int]) -> pa.Table:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        return pa.table({  # an Arrow table skips datasets' per-value conversion
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
            "loss_mask": pa.ListArray.from_arrays(pa.array(offsets), pa.array(mask)),
            "_drop": pa.array(drop, type=pa.string()),
            "_bad": pa.array(bad, type=pa.bool_()),
            "_row": pa.array(np.asarray(indices, dtype=np.int64) + self.row_offset),
        })

    def _table_from_flat(self, flat: FlatSamples, indices: list[int]) -> pa.Table:
        """The same table as the per-row path, computed on whole arrays."""
        if not isinstance(flat, FlatSamples) or len(flat.offsets) != len(indices) + 1:
            raise DataError(f"strategy '{self.strategy.name}': its fast path returned "
                            f"{type(flat).__name__}, not a FlatSamples of {len(indices)} rows")
        skip, min_size, max_size = self._limits()
        offsets = np.asarray(flat.offsets, dtype=np.int64)
        ids = np.asarray(flat.ids, dtype=np.int32)
        lengths = np.diff(offsets)
        starts = offsets[:-1]
        mask = None if flat.mask is None else np.array(flat.mask, dtype=np.int8)  # a copy we may edit
        if skip > 0:
            if mask is None:
                mask = np.ones(len(ids), dtype=np.int8)
            within = np.arange(len(ids), dtype=np.int64) - np.repeat(starts, lengths)
            mask[within < skip] = 0
        first = 0 if self.rechunking else 1  # a sample's first token is no target (see filter_reason)
        if mask is None:
            learned = lengths > first
        else:  # a mask bit from the first target on
            total = np.zeros(len(mask) + 1, dtype=np.int64)
            np.cumsum(mask, out=total[1:])
            learned = total[offsets[1:]] > total[np.minimum(starts + first, offsets[1:])]
        # the same checks in the same order as filter_reason()
        codes = np.zeros(len(lengths), dtype=np.int8)  # 0 keep, else index into reasons
        reasons = ["", FILTER_TOO_SHORT, f"shorter than min_token_size ({min_size})",
                   f"longer than max_token_size ({max_size})", FILTER_NO_MASK]
        checks = [lengths <= 1, (lengths < min_size) if min_size > 0 else None,
                  (lengths > max_size) if max_size > 0 else None, ~learned]
        for code, hit in enumerate(checks, 1):
            if hit is not None:
                codes[(codes == 0) & hit] = code
        drop = [reasons[c] for c in codes.tolist()]
        bad = [False] * len(lengths)
        for i, exc in flat.bad.items():
            drop[i], bad[i] = str(exc) or "bad row", True
            codes[i] = 1
        keep = codes == 0
        if not keep.all():
            tokens = np.repeat(keep, lengths)
            ids = ids[tokens]
            mask = None if mask is None else mask[tokens]
            lengths = np.where(keep, lengths, 0)
        if mask is None:
            mask = np.ones(len(ids), dtype=np.int8)
        return self._table(lengths, ids, mask, drop, bad, indices)

    def _encode(self, rows: list[dict], indices: list[int]) -> list[Sample | BadRow]:
        strategy = self.strategy
        try:
            results = strategy.encode_batch(rows)
            if len(results) != len(rows):
                raise DataError(f"strategy '{strategy.name}' returned {len(results)} samples "
                                f"for {len(rows)} rows")
            return self._checked(results, indices)
        except (BadRow, DataError):
            raise
        except Exception as exc:  # find the row that broke it, below
            failed = exc
        results = []
        for idx, row in zip(indices, rows):
            try:
                results.append(strategy.encode(row))
            except BadRow as exc:
                results.append(exc)
            except Exception as exc:
                row = idx + self.row_offset
                raise StrategyFailed(f"row {row} (0-based): strategy '{strategy.name}' failed with "
                                     f"{type(exc).__name__}: {exc}", row) from None
        fell_back(strategy, "encode_batch", "encode, row by row", failed)  # no row failed on its own
        return self._checked(results, indices)

    def _checked(self, results: list, indices: list[int]) -> list[Sample | BadRow]:
        """``results``, once each is a Sample or a BadRow (a plugin may return anything)."""
        for idx, res in zip(indices, results):
            if not isinstance(res, (Sample, BadRow)):
                row = idx + self.row_offset
                raise StrategyFailed(f"row {row} (0-based): strategy '{self.strategy.name}' returned "
                                     f"{type(res).__name__}, not a Sample(input_ids, loss_mask)", row)
        return results
