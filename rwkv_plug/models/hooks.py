"""Built-in plugin: the rwkv5 and rwkv7 architectures and the model commands."""

from __future__ import annotations

from rwkv_plug.core.hookspecs import hookimpl


@hookimpl
def register_models():
    from rwkv_plug.models.arch import RWKV5Arch
    from rwkv_plug.models.arch7 import RWKV7Arch

    return [RWKV5Arch, RWKV7Arch]


@hookimpl
def register_commands(cli):
    from rwkv_plug.models.commands import export_cmd, generate_cmd, init_model_cmd

    for command in (init_model_cmd, export_cmd, generate_cmd):
        cli.add_command(command)
