"""What the built-in strategies share: a row becomes a list of pieces.

A piece is a string to tokenise, or ids already tokenised (prefixes,
suffixes and separators are tokenised once per strategy), with a flag
saying whether its tokens are learned. Each piece is tokenised on its own
and the results are concatenated, so a token never spans two pieces (as in
the reference trainer). ``encode_batch`` sends every string of every row
to the tokenizer in one ``encode_batch`` call, which is what makes preload
fast; ``encode`` tokenises piece by piece and must give the same samples.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rwkv_plug.core.interfaces import BadRow, Sample, Strategy, Tokenizer

#: ``(text or ids, learn)``.
Piece = tuple[str | Sequence[int], bool]


def flat_encode(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[Any, Any]:
    """``tokenizer.encode_flat(texts)`` as ``(ids int32, offsets int64)`` numpy arrays
    (no copy when they are already that)."""
    import numpy as np

    ids, offsets = tokenizer.encode_flat(texts)
    return np.asarray(ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64)


def cell_text(row: Mapping[str, Any], column: str) -> str:
    """The string in ``row[column]``; anything else is a :class:`BadRow` naming the column.

    Reasons carry no cell content, so the pipeline can count rows per reason.
    """
    if column not in row:
        raise BadRow(f"column '{column}' is missing")
    value = row[column]
    if value is None:
        raise BadRow(f"column '{column}' is None")
    if not isinstance(value, str):
        raise BadRow(f"column '{column}' holds {type(value).__name__}, not text")
    return value


class PieceStrategy(Strategy):
    """A strategy defined by :meth:`pieces`; encoding is shared."""

    @abstractmethod
    def pieces(self, row: Mapping[str, Any]) -> list[Piece]:
        """The pieces of one row, in order; raise :class:`BadRow` to skip it."""

    def encode(self, row: Mapping[str, Any]) -> Sample:
        return _assemble(self.pieces(row), self.tokenizer.encode)

    def encode_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Sample | BadRow]:
        plans: list[list[Piece] | BadRow] = []
        texts: list[str] = []
        for row in rows:
            try:
                plan = self.pieces(row)
            except BadRow as exc:
                plans.append(exc)
                continue
            plans.append(plan)
            texts.extend(p for p, _ in plan if isinstance(p, str))
        encoded = iter(self.tokenizer.encode_batch(texts) if texts else ())
        out: list[Sample | BadRow] = []
        for plan in plans:
            if isinstance(plan, BadRow):
                out.append(plan)
            else:
                out.append(_assemble(plan, lambda _text: next(encoded)))
        return out


def _assemble(plan: list[Piece], encode: Callable[[str], Sequence[int]]) -> Sample:
    if len(plan) == 1:  # the text strategy's only shape: skip the copies
        piece, learn = plan[0]
        ids = encode(piece) if isinstance(piece, str) else piece
        if not isinstance(ids, list) or not isinstance(piece, str):
            ids = list(ids)  # never hand out a cached prefix list
        return Sample(ids, [1 if learn else 0] * len(ids))
    sample = Sample([], [])
    for piece, learn in plan:
        sample.extend(encode(piece) if isinstance(piece, str) else piece, learn)
    return sample
