"""Built-in plugin: registers the data pipeline's commands (data/commands.py)."""

from __future__ import annotations

from rwkv_plug.core.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    from rwkv_plug.data.commands import datapack, inspect_cmd, preload

    for command in (preload, datapack, inspect_cmd):
        cli.add_command(command)
