"""Where a row came from: ``file:line`` for messages about bad rows and bad files.

Everything here runs only when something must be reported (a skipped row's
example, a strict-mode failure, a file that does not parse), so it may read
a file again line by line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _records(path: Path):
    """``(line number, text)`` of each non-blank line: the rows of a JSON-lines file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def json_problem(path: Path) -> str | None:
    """``"file:line: what is wrong"`` for the first line of a JSON(-lines) file that
    does not parse or is not an object, or None when every line is fine."""
    if _is_json_array(path):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            return f"{path}:{line}: {_json_message(exc)}" if line else f"{path}: {_json_message(exc)}"
        return None
    for number, line in _records(path):
        try:
            value = json.loads(line.rstrip("\r\n"))
        except ValueError as exc:
            return f"{path}:{number}: {_json_message(exc)}"
        if not isinstance(value, dict):
            return f"{path}:{number}: a row must be a JSON object ({{\"column\": value, ...}}), got {line.strip()[:40]}"
    return None


def _json_message(exc: Exception) -> str:
    msg = getattr(exc, "msg", None)
    col = getattr(exc, "colno", None)
    if msg is None:
        return f"not valid JSON ({exc})"
    msg = msg.removesuffix(" at")
    msg = msg[:1].lower() + msg[1:]
    return f"not valid JSON at column {col} ({msg})" if col else f"not valid JSON ({msg})"


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


def json_text_clash(paths: Sequence[Path]) -> str | None:
    """``"file:line: ..."`` for the first cell, over ``paths`` read in order, of a
    column that holds text in some rows and another kind of value in others
    (nulls aside), or None."""
    first: dict[str, tuple[str, Path, int]] = {}
    for path in paths:
        if _is_json_array(path):
            return None
        for number, line in _records(path):
            try:
                row = json.loads(line.rstrip("\r\n"))
            except ValueError:
                return None  # reported as a parse error elsewhere
            if not isinstance(row, dict):
                return None
            for column, value in row.items():
                kind = _kind(value)
                if kind is None:
                    continue
                seen = first.setdefault(column, (kind, path, number))
                if seen[0] != kind and "text" in (seen[0], kind):
                    return (f"{path}:{number}: column '{column}' holds {kind}, but {seen[1]}:{seen[2]} "
                            f"holds {seen[0]}; in a source of several files such values are silently "
                            "turned into text (or the read fails). Give the column one kind of value "
                            "in every file: quote the numbers, or fix or remove the row")
    return None


class RowLocator:
    """Maps a row of a split (0-based, as the pipeline counts) to its file and line.

    ``files`` lists each source split's files in reading order and
    ``counts`` their row counts where the direct reader found them; other
    splits' files are counted when a row must be located (JSON lines and
    parquet cheaply; a csv file of a split of several files cannot be).
    """

    def __init__(self, builder: str | None, files: Mapping[str, Sequence[str]],
                 counts: Mapping[str, Sequence[int]], splits: Mapping[str, str]) -> None:
        self.builder = builder
        self.files = {k: [Path(f) for f in v] for k, v in files.items()}
        self.counts = {k: list(v) for k, v in counts.items() if len(v) == len(self.files.get(k, ()))}
        self.splits = dict(splits)  # pipeline split name -> source split name
        self._counted: dict[Path, int | None] = {}

    def __call__(self, split: str, row: int) -> str:
        """``"file:line"`` (JSON lines), ``"file row N"`` (csv, parquet) or ``"file"`` (text);
        ``""`` when the row cannot be located."""
        try:
            return self._locate(split, row)
        except (OSError, ValueError):  # a file gone or changed since it was read: no location
            return ""

    def _locate(self, split: str, row: int) -> str:
        name = self.splits.get(split, split)
        files = self.files.get(name) or []
        counts = self.counts.get(name)
        for i, path in enumerate(files):
            if len(files) == 1:
                return self._within(path, row)  # one file: its rows are the split's rows
            n = counts[i] if counts is not None else self._count(path)
            if n is None:
                return ""
            if row < n:
                return self._within(path, row)
            row -= n
        return ""

    def _count(self, path: Path) -> int | None:
        if path not in self._counted:
            self._counted[path] = self._count_rows(path)
        return self._counted[path]

    def _count_rows(self, path: Path) -> int | None:
        if self.builder == "text":
            return 1
        if self.builder == "json" and not _is_json_array(path):
            return sum(1 for _ in _records(path))
        if self.builder == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        return None

    def _within(self, path: Path, row: int) -> str:
        if self.builder == "text":
            return str(path)
        if self.builder == "json" and not _is_json_array(path):
            for i, (number, _) in enumerate(_records(path)):
                if i == row:
                    return f"{path}:{number}"
            return str(path)
        return f"{path} row {row}"  # 0-based, like the split's row beside it


def no_locator(split: str, row: int) -> str:
    """A locator for sources whose rows cannot be located."""
    return ""
