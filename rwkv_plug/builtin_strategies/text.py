"""The ``text`` strategy: one column of plain text, every token learned."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rwkv_plug.builtin_strategies.pieces import Piece, PieceStrategy, cell_text, flat_encode
from rwkv_plug.core.errors import DataError, did_you_mean
from rwkv_plug.core.interfaces import BadRow, FlatSamples, Option
from rwkv_plug.core.sections import option_values


def text_column(options: Mapping[str, Any]) -> str:
    """The column the text strategy reads: ``custom_text_key`` or ``text`` (``options`` is the
    validated ``data:`` section: the key's type was checked against its declaration)."""
    return option_values(TextStrategy, options).custom_text_key or "text"


class TextStrategy(PieceStrategy):
    """Plain text from one column (`text`, or data.custom_text_key); every token is learned."""

    name = "text"
    detect_priority = 30
    options = (
        Option(
            "custom_text_key",
            None,
            "Column to train on as plain text. Setting it means \"use the text strategy\": it is tried before "
            "every other strategy, and a name that is not a column is an error with a did-you-mean. Unset "
            "(null): the column `text`.",
            type=str,
        ),
    )

    @classmethod
    def priority(cls, options: Mapping[str, Any]) -> int:
        # An explicit custom_text_key is the user choosing this strategy
        # (the reference trainer checked it before everything else).
        return 0 if option_values(TextStrategy, options).custom_text_key else cls.detect_priority

    @classmethod
    def matches(cls, columns: Sequence[str], options: Mapping[str, Any]) -> bool:
        column = text_column(options)
        if column in columns:
            return True
        if option_values(TextStrategy, options).custom_text_key:
            # The user named a column that is not there: say so rather than
            # quietly falling back to another strategy.
            raise DataError(
                f"data.custom_text_key is '{column}' but the dataset has no such column "
                f"(columns: {list(columns)}).{did_you_mean(column, columns)}"
            )
        return False

    @classmethod
    def expects(cls, options: Mapping[str, Any]) -> str:
        if option_values(TextStrategy, options).custom_text_key:
            return f"needs {text_column(options)} (data.custom_text_key)"
        return "needs text (or set data.custom_text_key)"

    def __init__(self, options: Mapping[str, Any], tokenizer) -> None:
        super().__init__(options, tokenizer)
        self.column = text_column(self.opts)

    def pieces(self, row: Mapping[str, Any]) -> list[Piece]:
        text = cell_text(row, self.column)
        if not text:
            raise BadRow(f"column '{self.column}' is empty")
        return [(text, True)]

    def _own_encoding(self) -> bool:
        """Whether rows are read and encoded as this class does (not changed by a subclass)."""
        cls = type(self)
        return (cls.pieces is TextStrategy.pieces and cls.encode_batch is PieceStrategy.encode_batch
                and cls.encode is PieceStrategy.encode)

    def fast_paths(self) -> frozenset[str]:
        """Both, unless a subclass changes how a row is read or encoded: it then keeps its
        own behaviour through ``encode_batch``."""
        return frozenset({"flat", "arrow"}) if self._own_encoding() else frozenset()

    def encode_flat(self, rows: Sequence[Mapping[str, Any]]) -> FlatSamples | None:
        """``encode_batch`` as flat arrays (the pipeline's fast path), or None to decline
        (for subclasses that change how a row is read or encoded)."""
        if not self._own_encoding():
            return None
        import numpy as np

        texts: list[str] = []
        bad: dict[int, BadRow] = {}
        for i, row in enumerate(rows):
            try:
                texts.append(self.pieces(row)[0][0])  # type: ignore[arg-type]
            except BadRow as exc:
                bad[i] = exc
        ids, offsets = flat_encode(self.tokenizer, texts)
        if bad:  # give the bad rows zero tokens
            good = np.array([i for i in range(len(rows)) if i not in bad], dtype=np.int64)
            lengths = np.zeros(len(rows), dtype=np.int64)
            lengths[good] = np.diff(offsets)
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
        return FlatSamples(ids, offsets, None, bad)

    def encode_arrow(self, table: Any) -> FlatSamples | None:
        """``encode_flat`` of a pyarrow table's rows, or None to decline.

        Hands the string column's UTF-8 bytes to the tokenizer's
        ``encode_spans``, so no ``str`` is made per row; declines (the caller
        converts the rows and uses ``encode_flat``) for subclasses and
        columns that are not strings.
        """
        if (not self._own_encoding() or type(self).encode_flat is not TextStrategy.encode_flat
                or self.column not in table.column_names):
            return None
        import numpy as np
        import pyarrow as pa

        col = table.column(self.column)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            return None
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        n = len(arr)
        kind = np.int64 if pa.types.is_large_string(arr.type) else np.int32
        raw = arr.buffers()[1]
        ends = (np.frombuffer(raw, dtype=kind)[arr.offset: arr.offset + n + 1] if raw is not None
                else np.zeros(n + 1, kind)).astype(np.int64)
        lens = np.diff(ends)
        # the same reasons, in the same order, as pieces(): None, then empty
        null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(n, bool)
        bad = {int(i): BadRow(f"column '{self.column}' is None") for i in np.flatnonzero(null)}
        bad.update((int(i), BadRow(f"column '{self.column}' is empty"))
                   for i in np.flatnonzero(~null & (lens == 0)))
        bad = dict(sorted(bad.items()))
        good = np.flatnonzero(~null & (lens > 0))
        data = arr.buffers()[2]
        ids, offsets = self.tokenizer.encode_spans(b"" if data is None else data, ends[:-1][good], lens[good])
        offsets = np.asarray(offsets, dtype=np.int64)
        if bad:  # give the bad rows zero tokens
            sizes = np.zeros(n, dtype=np.int64)
            sizes[good] = np.diff(offsets)
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(sizes, out=offsets[1:])
        return FlatSamples(np.asarray(ids, dtype=np.int32), offsets, None, bad)
