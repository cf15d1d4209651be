"""Helpers for testing a plugin (public API, like :mod:`rwkv_plug`'s names).

- :class:`ByteTokenizer`: one token per UTF-8 byte, so expected ids are computed, not copied;
- :func:`registered_plugin`: a plugin set of the built-ins plus yours, for one ``with`` block;
- :func:`strategy_options`: a strategy's (or tokenizer's) options, defaults filled, values checked;
- :func:`data_config_problems` and :func:`detect_strategy`: what config validation and automatic
  detection make of a ``data:`` section, with the plugins in use.

The trainer's own test doubles (tiny models) are elsewhere, in
``rwkv_plug.training.testing``; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rwkv_plug.core.interfaces import Tokenizer

if TYPE_CHECKING:
    from rwkv_plug.core.plugins import Plugins

__all__ = ["ByteTokenizer", "registered_plugin", "strategy_options", "data_config_problems", "detect_strategy"]


class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte (vocab 256), for tests whose expected ids are easy to compute."""

    name = "bytes"

    @classmethod
    def load(cls, spec: str, options: Mapping[str, Any]) -> ByteTokenizer:
        return cls()

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        # a masked subset of a sample may cut a character's bytes: show those as U+FFFD
        return bytes(ids).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "bytes-utf8"


@contextmanager
def registered_plugin(plugin: Any, name: str = "test-plugin") -> Iterator[Plugins]:
    """A plugin set of the built-ins and ``plugin`` (a module or object with ``@hookimpl``
    functions) as the process-wide one inside the block; the previous set is back after it.

    Installed third-party plugins are left out, so the test sees only yours. A hook whose
    name no spec has (a misspelling) raises ``PluginError`` here. Yields the set:
    ``p.registry("strategy").entry("text")`` says which class and plugin won a name.
    """
    from rwkv_plug.core import plugins

    before = plugins.configured()
    try:
        current = plugins.configure("none")
        current.register(plugin, name=name)
        yield current
    finally:
        plugins.install(before)


def strategy_options(cls: type, **values: Any) -> dict[str, Any]:
    """The options ``cls`` declares, with defaults, overridden by ``values`` as a config would.

    Values go through the config's own checks (type, choices, escapes such as
    ``'\\n'``); an unknown key or a bad value raises ``ConfigError`` naming it.
    """
    from rwkv_plug.core.config import Problems, resolve_options

    problems = Problems(f"strategy_options({cls.__name__})")
    out = resolve_options("data", values, tuple(getattr(cls, "options", ()) or ()), problems, check_types=True)
    problems.raise_if_any()
    return out


def data_config_problems(data: Mapping[str, Any]) -> list[str]:
    """Every problem config validation finds in this ``data:`` section (``[]`` when valid),
    with the current plugin set's strategies and tokenizers, ``check_options`` included."""
    from rwkv_plug.core.config import Problems
    from rwkv_plug.data.options import resolve_data_config

    problems = Problems("data")
    resolve_data_config(dict(data), problems)
    return list(problems.items)


def detect_strategy(columns: Sequence[str], **data: Any) -> type:
    """The strategy class a dataset with ``columns`` gets, under these ``data:`` keys
    (``strategy=NAME`` forces one, as ``data.strategy`` does); defaults fill the rest."""
    from rwkv_plug.core.config import Problems, resolve_options
    from rwkv_plug.data.options import DATA_OPTIONS, plugin_options
    from rwkv_plug.data.strategy_select import pick_strategy

    problems = Problems("data")
    options = resolve_options("data", data, [*DATA_OPTIONS, *plugin_options()], problems, check_types=True)
    problems.raise_if_any()
    return pick_strategy(columns, options, options.get("strategy"))
