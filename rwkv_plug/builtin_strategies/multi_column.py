"""The ``multi_column`` strategy: several columns joined with prefixes and a separator.

With the seed's defaults a Dolly-style row renders as::

    Instruction:\\n{instruction}\\n\\nInput:\\n{input}\\n\\nOutput:\\n{output}

and every token is learned except those of the ``input`` column.

Differences from the reference trainer (fixed defects, see docs/config):
a ``null`` prefix or suffix entry means "none at this position" (the
reference shifted later entries); list lengths must match the keys (the
reference read past the end of the train mask); train mask entries must be
booleans (the reference compared them by identity with ``False``); the
documented defaults for prefix, train mask and separator still apply when
only ``multi_column_keys`` is set (the reference dropped them, training
glued, fully learned text), and keys of another count than the defaults'
three need their prefix and train mask lists written out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rwkv_plug.builtin_strategies.pieces import Piece, PieceStrategy
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.core.interfaces import BadRow, Option
from rwkv_plug.core.sections import option_values

DEFAULT_KEYS = ("instruction", "input", "output")
DEFAULT_PREFIX = ("Instruction:\n", "Input:\n", "Output:\n")
DEFAULT_SUFFIX = ("", "", "")
DEFAULT_TRAIN_MASK = (True, False, True)
DEFAULT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Layout:
    """The resolved multi-column settings, one entry per key."""

    keys: tuple[str, ...]
    prefix: tuple[str, ...]
    suffix: tuple[str, ...]
    train_mask: tuple[bool, ...]
    separator: str


def resolve_layout(options: Mapping[str, Any]) -> Layout:
    """Apply the defaults and the rules across the ``multi_column_*`` keys; one ConfigError lists
    every problem. ``options`` is the validated ``data:`` section: each key's own type (a list of
    column names, of strings or nulls, of true/false) was checked against its declaration when the
    config was read, so only what one key cannot say alone is checked here.

    An unset list takes the seed's default: the separator and suffix always,
    the prefix and train mask while there are as many keys as the defaults
    have (three; the keys may have other names). With another number of
    keys an unset prefix or train mask is an error naming the key to add,
    and every list must have one entry per key.
    """
    o = option_values(MultiColumnStrategy, options)
    keys = tuple(DEFAULT_KEYS if o.multi_column_keys is None else o.multi_column_keys)
    n = len(keys)
    # [] turns the strategy off: nothing else is read
    defaults_fit = n == len(DEFAULT_KEYS) or n == 0
    problems: list[str] = []
    missing: list[str] = []

    def per_key(key: str, value: Sequence[Any] | None, default: Sequence[Any], always: bool = False,
                give: str = "give one per key (null for none)") -> tuple[Any, ...]:
        if value is None:  # the default, else (an error when not `always`) its first entry per key
            if not (always or defaults_fit):
                missing.append(key)
            return tuple(default) if n == len(default) else (default[0],) * n
        if len(value) != n:
            problems.append(f"data.{key} has {len(value)} entries but data.multi_column_keys has {n}; {give}")
        return tuple(value)

    prefix = per_key("multi_column_prefix", o.multi_column_prefix, DEFAULT_PREFIX)
    suffix = per_key("multi_column_suffix", o.multi_column_suffix, DEFAULT_SUFFIX, always=True)
    mask = per_key("multi_column_train_mask", o.multi_column_train_mask, DEFAULT_TRAIN_MASK,
                   give="give one true/false per key")
    separator = DEFAULT_SEPARATOR if o.multi_column_separator is None else o.multi_column_separator
    if missing:
        problems.append((
            f"data.multi_column_keys has {n} keys, so the defaults for "
            f"{len(DEFAULT_KEYS)} keys do not apply: add "
            + " and ".join(f"data.{key}" for key in missing)
            + ", one entry per key, e.g. " + ", ".join(f"{key}: {_example(key, keys)}" for key in missing)
        ))
    if problems:
        raise ConfigError("; ".join(problems))
    return Layout(keys, tuple(p or "" for p in prefix), tuple(s or "" for s in suffix), mask, separator)


def _example(key: str, keys: Sequence[str]) -> str:
    """What a user might write for ``key``, e.g. ``['Question:\\n', 'Answer:\\n']`` for keys question, answer."""
    if key == "multi_column_train_mask":
        return "[" + ", ".join(["true"] * len(keys)) + "]"
    return "[" + ", ".join(f"'{k.capitalize()}:\\n'" for k in keys) + "]"


def _column_names(keys: Sequence[str]) -> str | None:
    return None if all(keys) else "a list of column names"  # an empty name is no column


_TURNED_OFF = ("data.strategy is multi_column but data.multi_column_keys is [], which turns it off; "
               "list the columns to join")


class MultiColumnStrategy(PieceStrategy):
    """Joins several columns (default instruction/input/output) with prefixes and a separator."""

    name = "multi_column"
    detect_priority = 10
    options = (
        Option(
            "multi_column_keys",
            None,
            "Columns to join, in this order. `[]` turns multi_column off. Unset (null): `['instruction', "
            "'input', 'output']`.",
            type=list[str],
            expects="a list of column names",
            check=_column_names,
        ),
        Option(
            "multi_column_prefix",
            None,
            "Text before each column, one entry per key; a `null` entry means no prefix there. Escapes apply. "
            "Unset (null): `['Instruction:\\n', 'Input:\\n', 'Output:\\n']` with three keys; required with "
            "another number of keys.",
            escapes=True,
            type=list[str | None],
            expects="a list with a string or null per key",
        ),
        Option(
            "multi_column_suffix",
            None,
            "Text after each column, one entry per key; a `null` entry means none. Escapes apply. Unset (null): "
            "none.",
            escapes=True,
            type=list[str | None],
            expects="a list with a string or null per key",
        ),
        Option(
            "multi_column_train_mask",
            None,
            "Whether each column's tokens are learned, one `true`/`false` per key. Unset (null): `[true, false, "
            "true]` with three keys; required with another number of keys.",
            type=list[bool],
            expects="a list with true or false per key",
        ),
        Option(
            "multi_column_separator",
            None,
            "Text between two emitted columns. Escapes apply. Unset (null): `'\\n\\n'`.",
            escapes=True,
            type=str,
        ),
    )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        try:
            layout = resolve_layout(options)
        except ConfigError as exc:
            return [str(exc)]
        if options.get("strategy") == cls.name and not layout.keys:
            return [_TURNED_OFF]
        return []

    @classmethod
    def matches(cls, columns: Sequence[str], options: Mapping[str, Any]) -> bool:
        # The seed's rule: used if any of the keys is a column.
        return any(key in columns for key in resolve_layout(options).keys)

    @classmethod
    def expects(cls, options: Mapping[str, Any]) -> str:
        keys = resolve_layout(options).keys
        if not keys:
            return "is off (data.multi_column_keys is [])"
        return "needs any of " + ", ".join(keys)

    def __init__(self, options: Mapping[str, Any], tokenizer) -> None:
        super().__init__(options, tokenizer)
        self.layout = resolve_layout(self.opts)
        if not self.layout.keys:
            raise ConfigError(_TURNED_OFF)
        enc = tokenizer.encode
        # Fixed strings are tokenised once, each on its own.
        self._prefix = [enc(p) if p else [] for p in self.layout.prefix]
        self._suffix = [enc(s) if s else [] for s in self.layout.suffix]
        self._separator = enc(self.layout.separator) if self.layout.separator else []

    def pieces(self, row: Mapping[str, Any]) -> list[Piece]:
        out: list[Piece] = []
        for i, key in enumerate(self.layout.keys):
            value = row.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise BadRow(f"column '{key}' holds {type(value).__name__}, not text")
            if not value:
                continue
            if out and self._separator:
                out.append((self._separator, True))
            if self._prefix[i]:
                out.append((self._prefix[i], True))
            out.append((value, self.layout.train_mask[i]))
            if self._suffix[i]:
                out.append((self._suffix[i], True))
        if not out:
            raise BadRow("no text in any of the columns " + ", ".join(self.layout.keys))
        return out
