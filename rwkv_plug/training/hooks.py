"""Built-in plugin: the ``fit`` command."""

from __future__ import annotations

import click

from rwkv_plug.core.hookspecs import hookimpl


@click.command("fit")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--resume",
    metavar="auto|PATH",
    default=None,
    help="Continue from a checkpoint: 'auto' picks the newest in the checkpoint dir (fresh start if none).",
)
def fit_command(config: str, resume: str | None) -> None:
    """Train a model as configured in CONFIG (trainer:/model:/data: YAML)."""
    from rwkv_plug.training.fit import run_fit

    run_fit(config, resume=resume, log=lambda msg: click.echo(msg, err=True))


@hookimpl
def register_commands(cli):
    cli.add_command(fit_command)
