"""``trainer:`` values checked before Lightning sees them, and Lightning's refusals as config errors.

Lightning checks most ``Trainer`` and ``ModelCheckpoint`` arguments only when
they are built, and some only once training runs (``max_epochs: ten`` fails
inside the fit loop with an empty ``AssertionError``). Values whose type hint
is simple (numbers, flags, strings, fixed choices) are checked here at config
load, against the constructors' own hints. Everything else is checked by
building the Trainer before any data work (``fit.run_fit``); what Lightning
refuses there becomes a ``ConfigError`` naming the key. A few values depend on
the data (the batches of an epoch): :func:`check_epoch_batches` checks them
once it is built, before ``trainer.fit``, and :func:`fit_naming_refusals` names the
key of what Lightning still refuses as ``trainer.fit`` sets up.
"""

from __future__ import annotations

import functools
import os
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from rwkv_plug.core.config import Problems
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.core.option_types import yaml_number

_SIMPLE = (bool, int, float, str, type(None))


@functools.cache
def _hints(target: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:  # an unresolvable hint in some Lightning version: leave the checks to Lightning
        return {}


def trainer_hints() -> dict[str, Any]:
    import lightning

    return _hints(lightning.Trainer.__init__)


def checkpoint_hints() -> dict[str, Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return _hints(ModelCheckpoint.__init__)


def allowed(hint: Any) -> tuple[set[type], list[Any]] | None:
    """The simple types and literal values ``hint`` admits, or ``None`` when it also
    admits something we do not check here (a class, a list, a mapping)."""
    kinds: set[type] = set()
    literals: list[Any] = []
    queue = [hint]
    while queue:
        h = queue.pop(0)
        origin = typing.get_origin(h)
        if origin is Union or origin is types.UnionType:
            queue.extend(typing.get_args(h))
        elif origin is Literal:
            literals.extend(typing.get_args(h))
        elif h in _SIMPLE:
            kinds.add(h)
        elif isinstance(h, type) and issubclass(h, os.PathLike):
            kinds.add(str)  # a path is written as a string in YAML
        else:
            return None
    return kinds, literals


def _fits(value: Any, kinds: set[type], literals: list[Any]) -> tuple[bool, Any]:
    """Whether ``value`` is admitted, and the value to use (numeric strings converted)."""
    if value is None:
        return type(None) in kinds or None in literals, value
    if isinstance(value, bool):
        return bool in kinds or any(v is value for v in literals), value
    if any(type(v) is type(value) and v == value for v in literals):
        return True, value
    if isinstance(value, int):
        return int in kinds or float in kinds, value
    if isinstance(value, float):
        if float in kinds:
            return True, value
        return (int in kinds and value.is_integer()), int(value) if value.is_integer() else value
    if isinstance(value, str):
        if str in kinds:
            return True, value
        number = yaml_number(value)
        return _fits(number, kinds, literals) if number is not None else (False, value)
    return False, value  # a mapping or a list where a single value belongs


def _describe(kinds: set[type], literals: list[Any]) -> str:
    parts = []
    if float in kinds:
        parts.append("a number")
    elif int in kinds:
        parts.append("an integer")
    if bool in kinds:
        parts.append("true or false")
    if str in kinds:
        parts.append("a string")
    if literals:
        names = list(dict.fromkeys(str(v) for v in literals if v is not None))
        parts.append(f"one of {', '.join(names)}")
    if type(None) in kinds or None in literals:
        parts.append("null")
    return " or ".join(parts)


#: Lower bounds Lightning's constructors leave unchecked (a 0 here fails mid-training).
MINIMUM = {"accumulate_grad_batches": 1, "check_val_every_n_epoch": 1, "log_every_n_steps": 1}


def check_values(section: str, values: dict[str, Any], hints: dict[str, Any], problems: Problems) -> None:
    """Check (and convert numeric strings in) ``values`` in place against ``hints``."""
    for key, value in list(values.items()):
        spec = allowed(hints[key]) if key in hints else None
        if spec is None:
            continue
        ok, converted = _fits(value, *spec)
        if ok:
            values[key] = converted
            low = MINIMUM.get(key)
            if low is not None and isinstance(converted, int) and not isinstance(converted, bool) and converted < low:
                problems.add(f"{section}.{key} must be >= {low}, got {value!r}")
        elif spec[1] and not spec[0] - {type(None)}:
            problems.add(f"{section}.{key}: {value!r} is not valid; use {_describe(*spec)}")
        else:
            problems.add(f"{section}.{key} must be {_describe(*spec)}, got {value!r}")


def _named_key(text: str, values: dict[str, Any]) -> str | None:
    """The key that Lightning's message names first (``accelerator='tpux'``, ``Precision 13``),
    else the key whose value it quotes (``Timer(duration='abc')`` for ``max_time: abc``)."""
    found = []
    for key in values:
        m = re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", text, re.IGNORECASE)
        if m:
            found.append((m.start(), -len(key), key))
    if not found:
        for key, value in values.items():
            if isinstance(value, str) and len(value) > 1 and (repr(value) in text or f"={value}" in text):
                found.append((text.index(repr(value) if repr(value) in text else f"={value}"), 0, key))
    if not found:  # a value named as a bare word: "No supported gpu backend found!"
        for key, value in values.items():
            if isinstance(value, str) and len(value) > 2 and value.lower() not in ("auto", "none", "true", "false"):
                m = re.search(rf"(?<![A-Za-z0-9_]){re.escape(value)}(?![A-Za-z0-9_])", text, re.IGNORECASE)
                if m:
                    found.append((m.start(), 0, key))
    return min(found)[2] if found else None


def refused(exc: BaseException, source: str, section: str, values: dict[str, Any]) -> ConfigError:
    """A one-line ``ConfigError`` for an exception raised by a Lightning constructor."""
    text = " ".join(str(exc).split()) or f"{type(exc).__name__} without a message"
    key = _named_key(text, values)
    if key is None:
        return ConfigError(f"{source}: {section}: Lightning refused these settings ({text}); "
                           f"check the {section} keys (docs/config.md)")
    return ConfigError(f"{source}: {section}.{key}: {values[key]!r} is not valid (Lightning: {text})")


def lightning_errors() -> tuple[type[BaseException], ...]:
    """What Lightning's constructors raise for a bad argument."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return ValueError, TypeError, AssertionError, MisconfigurationException


def check_epoch_batches(trainer, batches: int, source: str) -> None:
    """Refuse the ``trainer:`` values Lightning checks against the training batches of an
    epoch (``batches``: microbatches per device) only as ``trainer.fit`` starts."""
    limit = trainer.limit_train_batches
    if isinstance(limit, float) and 0 < limit < 1 and batches > 0 and int(batches * limit) == 0:
        raise ConfigError(
            f"{source}: trainer.limit_train_batches: {limit} of the {batches} training batches per epoch is "
            f"less than one batch; use at least {1 / batches:.3g}, or an integer number of batches")
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    interval = trainer.val_check_interval
    if (not isinstance(interval, int) or isinstance(interval, bool) or batches == 0
            or getattr(trainer, "_val_check_time_interval", None) is not None):
        return
    if interval > batches and trainer.check_val_every_n_epoch is not None and trainer.limit_val_batches > 0:
        raise ConfigError(
            f"{source}: trainer.val_check_interval: {interval} is more than the {batches} training batches "
            f"(microbatches per device) of an epoch; set it to at most {batches}, or to a fraction of "
            "the epoch such as 0.5, or set trainer.check_val_every_n_epoch: null to count batches across epochs")


def fit_naming_refusals(trainer, source: str, values: dict[str, Any], *args: Any, **kwargs: Any) -> None:
    """``trainer.fit(*args, **kwargs)``; a ``ValueError`` or ``MisconfigurationException``
    that Lightning raises itself (no rwkv-plug code between this call and the ``raise``)
    and whose message names a ``trainer:`` key becomes a ``ConfigError`` naming it.
    Anything else, ours or Lightning's, is raised as it is."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        trainer.fit(*args, **kwargs)
    except (ValueError, MisconfigurationException) as exc:
        if not _raised_by_lightning(exc) or _named_key(" ".join(str(exc).split()), values) is None:
            raise
        raise refused(exc, source, "trainer", values) from None


def _raised_by_lightning(exc: BaseException) -> bool:
    import lightning

    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    theirs = os.path.dirname(os.path.abspath(lightning.__file__))
    files = []
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # past the frame that called fit
    while tb is not None:
        files.append(os.path.abspath(tb.tb_frame.f_code.co_filename))
        tb = tb.tb_next
    return bool(files) and files[-1].startswith(theirs + os.sep) and not any(f.startswith(ours + os.sep) for f in files)
