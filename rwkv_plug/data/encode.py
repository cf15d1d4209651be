"""Rows -> samples: the strategy, the prefix-skip mask and the per-document filters.

One batched ``datasets.map`` does all of it, so every source row yields one
output row that says either "keep" or why it was dropped (``_drop``), and
which source row it was (``_row``). The summary counts those afterwards;
nothing is dropped without a reason on record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from rwkv_plug.core.errors import DataError
from rwkv_plug.core.interfaces import BadRow, Sample, Strategy, Tokenizer

FILTER_TOO_SHORT = "1 token or less (nothing to learn)"
FILTER_NO_MASK = "no trained tokens (all-zero loss mask)"


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


def filter_reason(ids: np.ndarray, mask: np.ndarray, min_size: int, max_size: int) -> str:
    """Why a document is dropped before rechunking, or "" to keep it."""
    n = len(ids)
    if n <= 1:
        return FILTER_TOO_SHORT
    if min_size > 0 and n < min_size:
        return f"shorter than min_token_size ({min_size})"
    if max_size > 0 and n > max_size:
        return f"longer than max_token_size ({max_size})"
    if not mask.any():
        return FILTER_NO_MASK
    return ""


def _mask_array(mask, n: int) -> np.ndarray:
    # all-ones masks (text) are the common case: skip the per-token conversion
    if isinstance(mask, list) and mask.count(0) == 0:
        return np.ones(n, dtype=np.int8)
    return np.array(mask, dtype=np.int8)


class Encoder:
    """The picklable batch function given to ``datasets.map``.

    Workers rebuild the tokenizer from its spec (``load_tokenizer``) rather
    than unpickling a possibly large tokenizer object.
    """

    def __init__(self, strategy_cls: type[Strategy], cfg: Mapping[str, Any],
                 tokenizer: Tokenizer, row_offset: int = 0) -> None:
        self.strategy_cls = strategy_cls
        self.cfg = dict(cfg)
        self.row_offset = row_offset
        self._tokenizer: Tokenizer | None = tokenizer
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

                self._tokenizer = load_tokenizer(self.cfg["tokenizer"], self.cfg)
            self._strategy = self.strategy_cls(self.cfg, self._tokenizer)
        return self._strategy

    def __call__(self, batch: dict[str, list], indices: list[int]) -> pa.Table:
        names = list(batch)
        rows = [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]
        results = self._encode(rows, indices)
        skip = int(self.cfg.get("data_prefix_skip_mask") or 0)
        min_size = int(self.cfg.get("min_token_size") or -1)
        max_size = int(self.cfg.get("max_token_size") or -1)
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
            reason = filter_reason(ids, mask, min_size, max_size)
            drop.append(reason)
            bad.append(False)
            lengths.append(0 if reason else len(ids))
            if not reason:
                ids_out.append(ids)
                mask_out.append(mask)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        flat_ids = np.concatenate(ids_out) if ids_out else np.zeros(0, np.int32)
        flat_mask = np.concatenate(mask_out) if mask_out else np.zeros(0, np.int8)
        return pa.table({  # an Arrow table skips datasets' per-value conversion
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(flat_ids)),
            "loss_mask": pa.ListArray.from_arrays(offsets, pa.array(flat_mask)),
            "_drop": pa.array(drop, type=pa.string()),
            "_bad": pa.array(bad, type=pa.bool_()),
            "_row": pa.array(np.asarray(indices, dtype=np.int64) + self.row_offset),
        })

    def _encode(self, rows: list[dict], indices: list[int]) -> list[Sample | BadRow]:
        strategy = self.strategy
        try:
            results = strategy.encode_batch(rows)
            if len(results) != len(rows):
                raise DataError(f"strategy '{strategy.name}' returned {len(results)} samples "
                                f"for {len(rows)} rows")
            return results
        except (BadRow, DataError):
            raise
        except Exception:
            pass  # find the row that broke it, below
        results = []
        for idx, row in zip(indices, rows):
            try:
                results.append(strategy.encode(row))
            except BadRow as exc:
                results.append(exc)
            except Exception as exc:
                raise DataError(f"source row {idx + self.row_offset} (0-based): strategy "
                                f"'{strategy.name}' failed with {type(exc).__name__}: {exc}") from None
        return results
