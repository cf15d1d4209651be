"""Turns the ``data.tokenizer`` value into a loaded :class:`Tokenizer`.

A registered name (built-in or third-party) loads that class. Otherwise an
existing local path or an ``org/name`` hub id goes to the class registered
as ``hf``. Anything else is an unknown name, reported with a did-you-mean.
Loaded tokenizers are cached per process, keyed by the spec and the
options the chosen class declares.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import UnknownNameError, did_you_mean
from rwkv_plug.core.interfaces import Tokenizer

HF_NAME = "hf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_cache: dict[tuple[Any, ...], Tokenizer] = {}
_lock = threading.Lock()


def _relevant_options(cls: type[Tokenizer], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options ``cls`` declares, defaults filled in (aliases resolved)."""
    out: dict[str, Any] = {}
    for opt in cls.options:
        value = opt.default
        for key in (opt.name, *opt.aliases):
            if key in options:
                value = options[key]
                break
        out[opt.name] = value
    return out


def pick_tokenizer_class(spec: str) -> type[Tokenizer]:
    """The class that loads ``spec``, without loading anything."""
    from rwkv_plug.core import plugins

    registry = plugins.tokenizers()
    if spec in registry:
        return registry.get(spec)
    if Path(spec).expanduser().exists() or _HUB_ID.match(spec):
        return registry.get(HF_NAME)
    names = list(registry.names())
    raise UnknownNameError(
        f"unknown tokenizer '{spec}'.{did_you_mean(spec, names)} Available: {', '.join(sorted(names))}; "
        "or a Hugging Face tokenizer as org/name, or a local folder that exists"
    )


def load_tokenizer(spec: str, options: Mapping[str, Any]) -> Tokenizer:
    """Load (or reuse) the tokenizer for ``data.tokenizer: spec``.

    ``options`` is the ``data:`` section (or any mapping holding the
    tokenizer's declared option keys); other keys are ignored.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownNameError(f"data.tokenizer must be a tokenizer name or path, got {spec!r}")
    spec = spec.strip()
    cls = pick_tokenizer_class(spec)
    relevant = _relevant_options(cls, options)
    key = (cls.__module__, cls.__qualname__, id(cls), spec, json.dumps(relevant, sort_keys=True, default=repr))
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    tokenizer = cls.load(spec, relevant)
    with _lock:
        return _cache.setdefault(key, tokenizer)


def clear_cache() -> None:
    """Forget loaded tokenizers (tests; or after changing the plugin set)."""
    with _lock:
        _cache.clear()
