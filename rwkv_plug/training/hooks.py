"""Built-in plugin: the ``fit`` command."""

from __future__ import annotations

import click

from rwkv_plug.core.hookspecs import hookimpl


@click.command("fit", short_help="Train a model as a config says.")
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.option(
    "-c",
    "--config",
    "config_option",
    metavar="CONFIG",
    type=click.Path(dir_okay=False),
    default=None,
    help="The config file, as an option (same as the CONFIG argument; give one of the two).",
)
@click.option(
    "--resume",
    metavar="auto|PATH",
    default=None,
    help="Continue from a checkpoint: 'auto' picks the newest in the checkpoint dir (fresh start if none).",
)
def fit_command(config: str | None, config_option: str | None, resume: str | None) -> None:
    """Train a model as configured in CONFIG (trainer:/model:/data: YAML)."""
    from rwkv_plug.training.fit import run_fit

    if config is not None and config_option is not None:
        raise click.UsageError(f"the config is given twice ({config} and -c {config_option}); give it once")
    if config is None and config_option is None:
        raise click.UsageError("no config file given: rwkv-plug fit CONFIG (or -c CONFIG)")
    run_fit(config or config_option, resume=resume, log=lambda msg: click.echo(msg, err=True))


@hookimpl
def register_commands(cli):
    cli.add_command(fit_command)
