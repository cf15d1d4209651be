"""Built-in plugin: registers the training commands (training/commands.py)."""

from __future__ import annotations

from rwkv_plug.core.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    from rwkv_plug.evaluation.commands import eval_command
    from rwkv_plug.training.commands import check_command, fit_command, plan_command, report_command

    for command in (fit_command, check_command, report_command, plan_command, eval_command):
        cli.add_command(command)
