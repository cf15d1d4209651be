"""YAML config loading and validation.

Every problem in a file is collected and reported at once, each naming the
section and key, with a did-you-mean for unknown keys. YAML is read with
``safe_load`` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import ConfigError, did_you_mean
from rwkv_plug.core.interfaces import Option
from rwkv_plug.core.option_types import check_value

_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|[ntr0\\'\"])")
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


def unescape(text: str) -> str:
    """Turn ``\\n``, ``\\t``, ``\\uXXXX`` ... written in single-quoted YAML into characters."""

    def sub(m: re.Match[str]) -> str:
        code = m.group(1)
        if code[0] in "ux":
            return chr(int(code[1:], 16))
        return _SIMPLE[code]

    return _ESCAPE.sub(sub, text)


def _unescape_value(value: Any) -> Any:
    if isinstance(value, str):
        return unescape(value)
    if isinstance(value, list):
        return [_unescape_value(v) for v in value]
    if isinstance(value, dict):  # e.g. a key -> prefix map: the texts are the values
        return {k: _unescape_value(v) for k, v in value.items()}
    return value


#: PyYAML's context words -> what a user wrote and did not close.
_UNCLOSED = {"flow sequence": "the [ list", "flow mapping": "the { mapping", "quoted scalar": "the quoted string"}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; errors name the file and line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        opened = getattr(exc, "context_mark", None)
        if opened is not None and ("<stream end>" in problem or "end of stream" in problem):
            # the file ended inside something: PyYAML points past the last line; say where it began
            context = str(getattr(exc, "context", "") or "")
            what = next((w for k, w in _UNCLOSED.items() if k in context), "a value")
            raise ConfigError(f"{p}: line {opened.line + 1} is not valid YAML: {what} begun there is never "
                              "closed") from None
        raise ConfigError(f"{p}:{where} is not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


#: The top-level sections of a training config (the seed's layout). Every command that reads
#: one (fit, preload, inspect) checks them with :func:`check_sections`.
CONFIG_SECTIONS = ("trainer", "model", "data", "seed_everything")


def check_sections(raw: Mapping[str, Any], known: Sequence[str], problems: "Problems",
                   kind: str = "a config") -> None:
    """Report every top-level section of ``raw`` that is not in ``known``, with a did-you-mean;
    e.g. ``unknown section 'trainr'. Did you mean 'trainer'? (a config has trainer, model, ...)``."""
    for section in raw:
        if section not in known:
            problems.add(f"unknown section '{section}'.{did_you_mean(str(section), known)} "
                         f"({kind} has {', '.join(known)})")


class Problems:
    """Collects config problems so they can be reported together."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def add_missing_file(self, message: str) -> None:
        """A file that an earlier step makes (``init-model``'s model) does not exist yet: a
        problem like any other here; ``rwkv-plug check`` shows it as a warning unless --strict."""
        self.add(message)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            raise ConfigError(f"{self.source}: {self.items[0]}")
        listed = "; ".join(self.items)
        raise ConfigError(f"{self.source}: {len(self.items)} problems: {listed}")


class Resolved(dict):
    """A section's values by option name (defaults filled in), with the names whose value
    failed its check in :attr:`failed`: rules across keys skip those (they were reported)."""

    failed: frozenset[str] = frozenset()


def resolve_options(
    section: str,
    values: Mapping[str, Any] | None,
    options: Sequence[Option],
    problems: Problems,
    passthrough: Iterable[str] = (),
    *,
    check_types: bool = False,
    yaml_numbers: bool = False,
) -> Resolved:
    """Validate ``values`` against declared ``options`` and fill in defaults.

    Unknown keys are reported with a did-you-mean; a key whose option has a
    :class:`~rwkv_plug.core.interfaces.Legacy` policy is refused with its
    reason, unless set to its no-op value, and is left out of the result (an
    option without one of the same name, e.g. a plugin's, wins over it); keys
    in ``passthrough`` are accepted as given. Aliases map to their option
    name. With ``check_types``, every value given is checked against its
    declaration (type, choices, range, check; see
    :func:`rwkv_plug.core.option_types.check_value`, with ``yaml_numbers``
    passed on) and each mismatch reported as ``section.key must be ..., got ...``.
    """
    values = dict(values or {})
    by_name: dict[str, Option] = {}
    for opt in sorted(options, key=lambda o: o.legacy is not None):  # declared keys first
        by_name.setdefault(opt.name, opt)
        for alias in opt.aliases:
            by_name.setdefault(alias, opt)
    passthrough = set(passthrough)
    out = Resolved({opt.name: opt.default for opt in options if by_name.get(opt.name) is opt and not opt.legacy})
    seen: dict[str, str] = {}
    failed: set[str] = set()
    for key, value in values.items():
        opt = by_name.get(key)
        if opt is not None and opt.legacy is not None:
            if not is_noop(value, opt.legacy.noop):
                problems.add(opt.legacy.refusal(f"{section}.{key}"))
            continue
        if opt is None:
            if key in passthrough:
                out[key] = value
                continue
            known = sorted(set(by_name) | passthrough)
            problems.add(f"unknown key {section}.{key}.{did_you_mean(key, known)}")
            continue
        if opt.name in seen:
            problems.add(f"{section}.{key} and {section}.{seen[opt.name]} set the same option; keep one")
            continue
        seen[opt.name] = key
        if check_types:
            value, problem = check_value(opt, value, yaml_numbers)
            if problem:
                problems.add(f"{section}.{key} {problem}")
                failed.add(opt.name)
        out[opt.name] = _unescape_value(value) if opt.escapes else value
    out.failed = frozenset(failed)
    return out


def is_noop(value: Any, noop_value: Any) -> bool:
    """Whether ``value`` is ``noop_value``; true/false never equal 1/0 here."""
    if isinstance(value, bool) or isinstance(noop_value, bool):
        return value is noop_value
    return value == noop_value
