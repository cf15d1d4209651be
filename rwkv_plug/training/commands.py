"""The training commands: ``fit``, ``check``, ``plan`` and ``report`` (the work is in fit.py,
check.py, plan.py and report.py; these are their command lines)."""

from __future__ import annotations

from pathlib import Path

import click


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


@click.command("check", short_help="Validate a fit config without building anything.",
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("words", metavar="CONFIG [--SECTION.KEY VALUE]...", nargs=-1, type=click.UNPROCESSED)
@click.option("--resume", metavar="auto|PATH", default=None,
              help="Also check the checkpoint fit --resume would continue from.")
@click.option("--strict", is_flag=True,
              help="Files an earlier command makes (model.load_model; data_path with skip_datapath_setup) "
              "must exist too: check that fit can start now.")
@click.pass_context
def check_command(ctx: click.Context, words: tuple[str, ...], resume: str | None, strict: bool) -> None:
    """Check CONFIG as fit would read it: every section and key, plugin options, tokenizer and
    kernel names, and the files it names. Prints one `error:` line per problem (exit 1), or an
    `ok:` line (exit 0). A missing model.load_model is a warning unless --strict.
    Command-line overrides (--trainer.max_steps 20 ...) are checked as fit applies them."""
    from rwkv_plug.training.check import check_config

    config, overrides = config_and_overrides(words, None, "check")
    report = check_config(config, resume=resume, strict=strict, overrides=overrides)
    for warning in report.warnings:
        click.echo(f"warning: {config}: {warning} (fit needs it; --strict makes this an error)", err=True)
    for error in report.errors:
        click.echo(f"error: {config}: {error}", err=True)
    if not report.ok:
        ctx.exit(1)
    note = f"; {len(report.warnings)} warning(s) above" if report.warnings else ""
    click.echo(f"ok: {config}: {report.summary}{note}")



@click.command("plan", short_help="Samples, steps and peak memory per device of a fit config.",
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("words", metavar="CONFIG [--SECTION.KEY VALUE]...", nargs=-1, type=click.UNPROCESSED)
def plan_command(words: tuple[str, ...]) -> None:
    """Print what `rwkv-plug fit CONFIG` would train and the memory it needs per device.

    Builds the dataset if it is missing (as fit does); loads no weights and trains
    nothing. Overrides work as for fit: --trainer.microbatch_size 4.
    """
    from rwkv_plug.training.plan import run_plan

    config, overrides = config_and_overrides(words, None, command="plan")
    run_plan(config, overrides)



@click.command("report", short_help="Summarise a training run and plot its curves.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the PNG (default: RUN_DIR/report.png).")
def report_command(run_dir: str, out: str | None) -> None:
    """Print a summary of the run in RUN_DIR (steps, tokens, losses, tokens/s, wall time) and write a PNG
    of its loss and learning-rate curves. RUN_DIR is the run's root (e.g. runs/cfg) or one log folder."""
    from rwkv_plug.training.report import plot_run, summarize, table
    from rwkv_plug.training.runlogs import read_run

    log = read_run(run_dir)
    rows = table(summarize(log))
    width = max(len(name) for name, _ in rows)
    click.echo(f"run: {run_dir} ({len(log.folders)} log folder{'s' if len(log.folders) != 1 else ''})")
    for name, value in rows:
        click.echo(f"  {name.ljust(width)}  {value}")
    path = Path(out) if out else Path(run_dir) / "report.png"
    plot_run(log, path)
    click.echo(f"curves: {path}")
