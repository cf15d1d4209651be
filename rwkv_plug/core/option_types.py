"""The value type of an :class:`~rwkv_plug.core.interfaces.Option`: derived, checked, described.

A plugin gets value checks for free: an option whose default is ``True``
only accepts true/false, one whose default is ``3`` only integers, and so
on. ``Option(type=..., choices=..., check=...)`` says more where the default
cannot (a default of None, a list of strings, a number that may be a
fraction). The config layer calls :func:`check_value` for every key a user
sets and reports each problem as ``section.key must be ..., got ...``, the wording of
the model and trainer sections' checks too.
"""

from __future__ import annotations

import math
import numbers
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from rwkv_plug.core.interfaces import Option

_NONE = type(None)
#: YAML 1.1 (PyYAML) reads ``3e-4`` as a string; such a string is read as the number.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
#: (one, many) wording per simple type, as users write values in YAML.
_WORDS = {
    bool: ("true or false", "true/false values"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    _NONE: ("null", "nulls"),
}


def yaml_number(text: str) -> int | float | None:
    """The number a YAML 1.1 string such as ``'3e-4'`` or ``'12'`` spells (PyYAML leaves
    those as strings), or None when it spells none. Every config section reads such
    strings through this one function."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)


def option_type(opt: Option) -> Any:
    """The type ``opt`` values must have (``object`` for anything), null included where allowed."""
    tp = opt.type if opt.type is not None else _derived(opt.default)
    if tp is object or tp is Any:
        return object
    if opt.default is None and _NONE not in _members(tp):
        tp = typing.Optional[tp]
    return tp


def _derived(default: Any) -> Any:
    for kind in (bool, int, float, str):
        if isinstance(default, kind):
            return kind
    if isinstance(default, (list, tuple)):
        return list
    if isinstance(default, Mapping):
        return dict
    return object


def _members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def matches(tp: Any, value: Any) -> bool:
    """Whether ``value`` (as read from YAML) has type ``tp``."""
    return any(_matches_one(member, value) for member in _members(tp))


def _matches_one(tp: Any, value: Any) -> bool:
    if tp is object or tp is Any:
        return True
    if tp is None or tp is _NONE:
        return value is None
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(matches(args[0], v) for v in value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        return len(args) != 2 or all(matches(args[0], k) and matches(args[1], v) for k, v in value.items())
    return isinstance(value, origin)


def describe(tp: Any, many: bool = False) -> str:
    """``tp`` in a user's words: ``a list of strings or null``."""
    words = []
    members = _members(tp)
    if int in members and float in members:  # "an integer or a number" says "a number" twice
        members = tuple(m for m in members if m is not int)
    for member in sorted(members, key=lambda m: m is _NONE):  # null last
        origin, args = typing.get_origin(member) or member, typing.get_args(member)
        if member in _WORDS:
            words.append(_WORDS[member][many])
        elif member is object or member is Any:
            words.append("values" if many else "any value")
        elif origin in (list, tuple):
            words.append(("lists" if many else "a list") + (f" of {describe(args[0], True)}" if args else ""))
        elif origin in (dict, Mapping):
            of = f" of {describe(args[0], True)} to {describe(args[1], True)}" if len(args) == 2 else ""
            words.append(("mappings" if many else "a mapping") + of)
        else:
            name = getattr(origin, "__name__", str(origin))
            words.append(f"{name} values" if many else f"a {name}")
    return " or ".join(words)


def check_value(opt: Option, value: Any, yaml_numbers: bool = False) -> tuple[Any, str | None]:
    """``(value, None)`` when ``value`` suits ``opt``, else ``(value, "must be ..., got ...")``.

    The returned value may be converted: a YAML 1.1 string such as ``'3e-4'``
    given where a number is expected becomes that number. With
    ``yaml_numbers`` (the ``model:`` and ``trainer:`` sections, as the earlier
    trainer read them) a number key also takes an integer-valued float or
    string where an integer is expected, and the value becomes the key's type
    (``2048.0`` -> ``2048``, ``1`` -> ``1.0``). When ``opt.expects`` is set,
    every wrong value is reported in its words.
    """
    tp = option_type(opt)
    members = _members(tp)
    number = _number_kind(members)
    given = value
    if yaml_numbers and number is not None and (value is not None or _NONE not in members):
        value, problem = _yaml_number(value, number)
    else:
        if isinstance(value, str) and float in members and str not in members and yaml_number(value) is not None:
            value = float(yaml_number(value))
        problem = None if matches(tp, value) else f"must be {describe(tp)}, got {value!r}"
    if problem is None and value is not None:
        problem = _rules(opt, value, given)
    if problem is None:
        return value, None
    if opt.expects:
        problem = f"must be {opt.expects}, got {value!r}"
    problem += _bad_entry(tp, value)
    if opt.suggest:  # the earlier wording: always a full stop, then any did-you-mean
        from rwkv_plug.core.errors import did_you_mean

        problem += "." + (did_you_mean(value, [str(c) for c in opt.choices]) if isinstance(value, str) else "")
    return value, problem


def _bad_entry(tp: Any, value: Any) -> str:
    """``"; entry 1 is 0, not true or false"`` when ``value`` is a list of the wrong entries for
    ``tp``'s list type, so a long list's message points at the entry to fix; else ""."""
    if not isinstance(value, (list, tuple)):
        return ""
    for member in _members(tp):
        args = typing.get_args(member)
        if (typing.get_origin(member) or member) in (list, tuple) and args:
            for i, entry in enumerate(value):
                if not matches(args[0], entry):
                    return f"; entry {i} is {entry!r}, not {describe(args[0])}"
    return ""


def _number_kind(members: tuple[Any, ...]) -> type | None:
    """``int`` or ``float`` when a value of these types is a number and nothing else but null."""
    rest = [m for m in members if m is not _NONE]
    return rest[0] if len(rest) == 1 and rest[0] in (int, float) else None


def _yaml_number(value: Any, kind: type) -> tuple[Any, str | None]:
    """``value`` read as a number of ``kind`` the way the earlier trainer's sections were."""
    if isinstance(value, bool) or value is None:
        return value, f"must be a number, got {value!r}"
    parsed = yaml_number(value) if isinstance(value, str) else value
    if not isinstance(parsed, (int, float)) or (kind is int and not float(parsed).is_integer()):
        return value, f"must be {'an integer' if kind is int else 'a number'}, got {value!r}"
    return kind(parsed), None


def _rules(opt: Option, value: Any, given: Any) -> str | None:
    """The declaration's own rules for a non-null value of the right type: choices, range, check."""
    if opt.choices and value not in opt.choices:
        return f"must be one of {', '.join(repr(c) for c in opt.choices)}, got {value!r}"
    if opt.minimum is not None and value < opt.minimum:
        return f"must be >= {opt.minimum}, got {given!r}"
    if opt.below is not None and value >= opt.below:
        return f"must be < {opt.below}, got {value!r}"
    if opt.check is not None:
        wanted = opt.check(value)
        if wanted:
            return f"must be {wanted}, got {value!r}"
    return None
