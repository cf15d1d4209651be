"""The ``prompt_completion`` strategy: learn the completion, not the prompt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rwkv_plug.builtin_strategies.pieces import Piece, PieceStrategy, cell_text
from rwkv_plug.core.interfaces import BadRow, Option
from rwkv_plug.core.sections import option_values


class PromptCompletionStrategy(PieceStrategy):
    """`prompt` + `completion` columns; only completion tokens are learned (target-aligned)."""

    name = "prompt_completion"
    detect_priority = 20
    options = (
        Option(
            "disable_prompt_completion_mask",
            False,
            "`prompt_completion` only: if true, prompt tokens are learned too.",
        ),
    )

    @classmethod
    def matches(cls, columns: Sequence[str], options: Mapping[str, Any]) -> bool:
        return "prompt" in columns and "completion" in columns

    @classmethod
    def expects(cls, options: Mapping[str, Any]) -> str:
        return "needs prompt and completion"

    def __init__(self, options: Mapping[str, Any], tokenizer) -> None:
        super().__init__(options, tokenizer)
        self.learn_prompt = option_values(PromptCompletionStrategy, options).disable_prompt_completion_mask

    def pieces(self, row: Mapping[str, Any]) -> list[Piece]:
        prompt = cell_text(row, "prompt")
        completion = cell_text(row, "completion")
        if not prompt and not completion:
            raise BadRow("columns 'prompt' and 'completion' are empty")
        # Masks are target-aligned: every completion token, the first one
        # included, is learned as the prediction from the tokens before it.
        return [(prompt, self.learn_prompt), (completion, True)]
