"""What a plugin can contribute. Every hook is a contribution, not a switch.

A plugin module (or object) implements any of these with ``@hookimpl``.
All hooks are called on every plugin; results are collected, never
short-circuited. Built-in plugins use exactly the same hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("rwkv_plug")
hookimpl = pluggy.HookimplMarker("rwkv_plug")


@hookspec
def register_strategies():
    """Return a list of dataset strategy classes (subclasses of ``Strategy``)."""


@hookspec
def register_tokenizers():
    """Return a list of tokenizer classes (subclasses of ``Tokenizer``)."""


@hookspec
def register_kernels():
    """Return a list of WKV kernel classes (subclasses of ``Kernel``)."""


@hookspec
def register_models():
    """Return a list of model architecture classes (subclasses of ``ModelArch``)."""


@hookspec
def register_commands(cli):
    """Attach extra click commands to the ``rwkv-plug`` group ``cli``."""
