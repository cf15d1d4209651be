"""The documented environment variables, read in this one place only.

=============================  ==============================================
``RWKV_PLUG_PLUGINS``          ``all`` (default), ``none``, or a comma list of
                               third-party entry-point names to load.
``RWKV_PLUG_STRICT_PLUGINS``   ``1`` makes a broken third-party plugin an error.
``RWKV_PLUG_NEOX_TOKENIZER``   Path of the GPT-NeoX 20B ``tokenizer.json``.
``RWKV_PLUG_CACHE``            Folder for compiled kernels and kernel
                               self-check verdicts (default
                               ``~/.cache/rwkv_plug``).
``TRITON_INTERPRET``           ``1`` runs Triton kernels in Triton's CPU
                               interpreter (tests, debugging). Triton reads it
                               too, so set it before anything imports triton.
=============================  ==============================================

Nothing reads ``os.environ`` at import time; call :func:`settings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    plugins: str = "all"
    strict_plugins: bool = False
    neox_tokenizer: str | None = None
    cache_dir: Path = field(default_factory=lambda: _default_cache())
    #: TRITON_INTERPRET=1: the triton kernel may run on CPU tensors (slowly).
    triton_interpret: bool = False


def _default_cache() -> Path:
    return Path.home() / ".cache" / "rwkv_plug"  # reads HOME: only when asked, never at import


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _switch(name: str, value: str | None) -> bool:
    """An on/off variable of ours; anything but the usual spellings is an error, not 'off'."""
    word = (value or "").strip().lower()
    if word in {"", "0", "false", "no", "off"}:
        return False
    if word in {"1", "true", "yes", "on"}:
        return True
    from rwkv_plug.core.errors import ConfigError

    raise ConfigError(f"environment variable {name} must be 1 or 0, got {value!r}")


def settings(environ: dict[str, str] | None = None) -> Settings:
    """Read the documented variables from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    cache = env.get("RWKV_PLUG_CACHE")
    return Settings(
        plugins=env.get("RWKV_PLUG_PLUGINS", "all").strip() or "all",
        strict_plugins=_switch("RWKV_PLUG_STRICT_PLUGINS", env.get("RWKV_PLUG_STRICT_PLUGINS")),
        neox_tokenizer=env.get("RWKV_PLUG_NEOX_TOKENIZER") or None,
        cache_dir=Path(cache) if cache else _default_cache(),
        triton_interpret=_truthy(env.get("TRITON_INTERPRET")),
    )
