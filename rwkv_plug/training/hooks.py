"""Built-in plugin: the ``fit``, ``check``, ``report`` and ``plan`` commands."""

from __future__ import annotations

import click

from rwkv_plug.core.hookspecs import hookimpl


@click.command("fit", short_help="Train a model as a config says.",
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("words", metavar="[CONFIG] [--SECTION.KEY VALUE]...", nargs=-1, type=click.UNPROCESSED)
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
def fit_command(words: tuple[str, ...], config_option: str | None, resume: str | None) -> None:
    """Train a model as configured in CONFIG (trainer:/model:/data: YAML).

    Any config key can be set on the command line, over the file's value:
    --trainer.max_steps 20 --model.lr_init 1e-4 --data.data_path x/ (values are
    YAML scalars; checked like the file's; kept in the run's saved config.yaml).
    """
    from rwkv_plug.training.fit import run_fit

    config, overrides = config_and_overrides(words, config_option)
    run_fit(config, resume=resume, log=lambda msg: click.echo(msg, err=True), overrides=overrides)


def config_and_overrides(words: tuple[str, ...], config_option: str | None,
                         command: str = "fit") -> tuple[str, dict]:
    """The config path (the CONFIG argument or -c) and the ``--section.key value`` overrides."""
    from rwkv_plug.core.config import CONFIG_SECTIONS
    from rwkv_plug.core.overrides import split_overrides

    positional, overrides = split_overrides(words, CONFIG_SECTIONS)
    if len(positional) > 1:
        raise click.UsageError(f"one config file, please: got {', '.join(positional)}")
    config = positional[0] if positional else None
    if config is not None and config_option is not None:
        raise click.UsageError(f"the config is given twice ({config} and -c {config_option}); give it once")
    if config is None and config_option is None:
        also = " (or -c CONFIG)" if command == "fit" else ""
        raise click.UsageError(f"no config file given: rwkv-plug {command} CONFIG{also}")
    return config or config_option, overrides


@hookimpl
def register_commands(cli):
    from rwkv_plug.evaluation.command import eval_command
    from rwkv_plug.training.check import check_command
    from rwkv_plug.training.plan import plan_command
    from rwkv_plug.training.report import report_command

    cli.add_command(fit_command)
    cli.add_command(check_command)
    cli.add_command(report_command)
    cli.add_command(plan_command)
    cli.add_command(eval_command)
