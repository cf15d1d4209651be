"""What a plugin can contribute. Every hook is a contribution, not a switch.

A plugin module (or object) implements any of these with ``@hookimpl``
(``from rwkv_plug import hookimpl``). None is ``firstresult``: every
implementation is called, built-ins first, and the results are collected.
A plugin that implements a name not listed here (``register_strategy``) is
broken: ``rwkv-plug plugins`` shows it with the hook's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from rwkv_plug.core.interfaces import Kernel, ModelArch, Strategy, Tokenizer

hookspec = pluggy.HookspecMarker("rwkv_plug")
hookimpl = pluggy.HookimplMarker("rwkv_plug")


@hookspec
def register_strategies() -> list[type[Strategy]]:
    """Contribute dataset strategies.

    Called once per plugin set, the first time the strategy registry is needed.
    :return: subclasses of ``Strategy``; a ``name`` a built-in has overrides it.
    Not firstresult: every plugin's list is collected.
    """


@hookspec
def register_tokenizers() -> list[type[Tokenizer]]:
    """Contribute tokenizers (the values of ``data.tokenizer``).

    Called once per plugin set, the first time the tokenizer registry is needed.
    :return: subclasses of ``Tokenizer``. Not firstresult.
    """


@hookspec
def register_kernels() -> list[type[Kernel]]:
    """Contribute WKV kernels (the values of ``model.kernel``).

    Called once per plugin set, the first time the kernel registry is needed.
    :return: subclasses of ``Kernel``. Not firstresult.
    """


@hookspec
def register_models() -> list[type[ModelArch]]:
    """Contribute model architectures, detected from a checkpoint's tensors.

    Called once per plugin set, the first time the model registry is needed.
    :return: subclasses of ``ModelArch``. Not firstresult.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Attach click commands to the ``rwkv-plug`` group.

    Called once per process, the first time the CLI lists or resolves a command.
    :param cli: the ``rwkv-plug`` click group; call ``cli.add_command``.
    :return: nothing (ignored). Not firstresult.
    """
