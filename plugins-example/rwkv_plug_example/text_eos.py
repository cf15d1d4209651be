"""Overrides the built-in ``text`` strategy to mark the end of each document.

It behaves exactly like the built-in, then appends ``<|endoftext|>`` (a
learned token), so a model trained on many short documents learns where
a document ends. Registering the same name as a built-in overrides it, and
``rwkv-plug list-strategies`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rwkv_plug import Option, Sample, TextStrategy


class TextWithEndOfText(TextStrategy):
    """Plain text, with an <|endoftext|> token appended to every document."""

    name = "text"
    options = TextStrategy.options + (
        Option("text_end_of_document", "<|endoftext|>", "Text appended to each document.", escapes=True),
    )

    def __init__(self, options: Mapping[str, Any], tokenizer) -> None:
        super().__init__(options, tokenizer)
        self.end = tokenizer.encode(self.opts.get("text_end_of_document") or "")

    def encode(self, row: Mapping[str, Any]) -> Sample:
        sample = super().encode(row)
        sample.extend(self.end, learn=True)
        return sample

    def encode_batch(self, rows):
        out = super().encode_batch(rows)
        for sample in out:
            if isinstance(sample, Sample):
                sample.extend(self.end, learn=True)
        return out
