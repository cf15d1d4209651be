"""rwkv-plug: a plugin-based trainer for RWKV language models.

Importing this package is cheap: it loads no plugin, reads no environment
variable and compiles nothing. Work starts in :mod:`rwkv_plug.core.cli`.

The names below are the public plugin API: everything a plugin needs is
``from rwkv_plug import ...`` (and :mod:`rwkv_plug.testing` for its tests).
Each is imported on first use, so ``import rwkv_plug`` stays cheap (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC: dict[str, str] = {
    "hookimpl": "rwkv_plug.core.hookspecs",
    **dict.fromkeys(
        ("Strategy", "Tokenizer", "Kernel", "KernelCaps", "ModelArch", "Option", "Legacy", "Sample", "BadRow",
         "FlatSamples"),
        "rwkv_plug.core.interfaces",
    ),
    **dict.fromkeys(
        ("RwkvPlugError", "ConfigError", "DataError", "TokenizerError", "PluginError", "KernelError",
         "ModelError"),
        "rwkv_plug.core.errors",
    ),
    # the built-in text strategy, for plugins that extend it (plugins-example's text_eos)
    "TextStrategy": "rwkv_plug.builtin_strategies.text",
    # a plugin's own data: keys as a typed, frozen object
    "option_values": "rwkv_plug.core.sections",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports lazily
    from rwkv_plug.builtin_strategies.text import TextStrategy
    from rwkv_plug.core.errors import (
        ConfigError, DataError, KernelError, ModelError, PluginError, RwkvPlugError, TokenizerError,
    )
    from rwkv_plug.core.hookspecs import hookimpl
    from rwkv_plug.core.interfaces import (
        BadRow, FlatSamples, Kernel, KernelCaps, Legacy, ModelArch, Option, Sample, Strategy, Tokenizer,
    )


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'rwkv_plug' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
