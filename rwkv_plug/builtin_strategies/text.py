"""The ``text`` strategy: one column of plain text, every token learned."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rwkv_plug.builtin_strategies.pieces import Piece, PieceStrategy, cell_text
from rwkv_plug.core.errors import ConfigError, DataError, did_you_mean
from rwkv_plug.core.interfaces import BadRow, Option


def text_column(options: Mapping[str, Any]) -> str:
    """The column the text strategy reads: ``custom_text_key`` or ``text``."""
    key = options.get("custom_text_key")
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"data.custom_text_key must be a column name, got {key!r}")
    return key or "text"


class TextStrategy(PieceStrategy):
    """Plain text from one column (`text`, or data.custom_text_key); every token is learned."""

    name = "text"
    detect_priority = 30
    options = (
        Option(
            "custom_text_key",
            None,
            "Column to train on as plain text (null means 'text'). Setting it picks the "
            "text strategy first, before multi_column and prompt_completion.",
        ),
    )

    @classmethod
    def priority(cls, options: Mapping[str, Any]) -> int:
        # An explicit custom_text_key is the user choosing this strategy
        # (the reference trainer checked it before everything else).
        return 0 if options.get("custom_text_key") else cls.detect_priority

    @classmethod
    def matches(cls, columns: Sequence[str], options: Mapping[str, Any]) -> bool:
        column = text_column(options)
        if column in columns:
            return True
        if options.get("custom_text_key"):
            # The user named a column that is not there: say so rather than
            # quietly falling back to another strategy.
            raise DataError(
                f"data.custom_text_key is '{column}' but the dataset has no such column "
                f"(columns: {list(columns)}).{did_you_mean(column, columns)}"
            )
        return False

    @classmethod
    def expects(cls, options: Mapping[str, Any]) -> str:
        if options.get("custom_text_key"):
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
