"""The data pipeline's commands: ``preload``, ``datapack`` and ``inspect``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rwkv_plug.data.options import DataConfig


def load_data_config(path: str) -> tuple["DataConfig", dict[str, Any]]:
    """``(typed data: section, whole file)``; the other sections' keys are left to their
    owners, but an unknown section is reported as ``fit`` reports it."""
    from rwkv_plug.core.config import CONFIG_SECTIONS, Problems, check_sections, load_yaml
    from rwkv_plug.data.options import data_config, resolve_data_config

    whole = load_yaml(path)
    problems = Problems(path)
    check_sections(whole, CONFIG_SECTIONS, problems)
    if "data" not in whole:
        problems.add("there is no data: section; add one with data_path and source")
        problems.raise_if_any()
    cfg = resolve_data_config(whole["data"], problems)
    problems.raise_if_any()
    return data_config(cfg), whole


@click.command("preload", short_help="Build the tokenized dataset of a config.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Rebuild even if data_path is up to date.")
def preload(config: str, force: bool) -> None:
    """Build the dataset of a config into its data_path (or confirm it is up to date)."""
    from rwkv_plug.core.errors import ConfigError
    from rwkv_plug.data.pipeline import load_summary, prepare_dataset

    cfg, _ = load_data_config(config)
    cfg = cfg.replace(skip_datapath_setup=False)  # preload's job is the check (as in the earlier trainer)
    if not cfg.source:
        raise ConfigError(f"{config}: data.source is required to build data_path (skip_datapath_setup only "
                          "lets fit and inspect do without it)")
    _, status = prepare_dataset(cfg, force=force, log=click.echo, load=False)  # on disk is all it needs
    if status == "reused":
        summary = load_summary(cfg.data_path)
        if summary is not None:
            for line in summary.lines():
                click.echo(line)
    click.echo(f"dataset {status}: {cfg.data_path}")


@click.command("datapack", short_help="Build several datasets and mix them into one.")
@click.argument("pack", metavar="PACK.yaml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Rebuild every dataset and the mix even if up to date.")
def datapack(pack: str, force: bool) -> None:
    """Build each dataset of a datapack file (datapack/default/dataset sections), then mix them
    into datapack.data_path (see docs/config.md, Datapacks)."""
    from rwkv_plug.data.datapack import build_pack

    _, status = build_pack(pack, force=force, log=click.echo)
    click.echo(f"datapack {status}")


@click.command("inspect", short_help="Dataset statistics and rendered samples.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--samples", default=3, show_default=True, type=click.IntRange(min=0),
              help="How many samples to render (0: statistics only).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--color/--no-color", default=None,
              help="Colour the samples (default: only on a terminal).")
@click.option("--ctx-len", type=click.IntRange(min=1), default=None,
              help="Mark chunk boundaries every N tokens (default: model.ctx_len of the config).")
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(min=1),
              help="Render at most this many tokens of each sample.")
def inspect_cmd(config: str, samples: int, split: str, color: bool | None, ctx_len: int | None,
                max_tokens: int) -> None:
    """Show dataset statistics and render a few samples (builds or reuses like fit does)."""
    from rwkv_plug.data import view
    from rwkv_plug.data.pipeline import prepare_dataset
    from rwkv_plug.data.tokenizer import load_tokenizer

    cfg, whole = load_data_config(config)
    if ctx_len is None:
        model = whole.get("model") if isinstance(whole.get("model"), dict) else {}
        value = model.get("ctx_len")
        ctx_len = value if isinstance(value, int) and value > 0 else None
    if color is None:
        color = sys.stdout.isatty()
    dd, _ = prepare_dataset(cfg, log=click.echo)
    trainer = whole.get("trainer") if isinstance(whole.get("trainer"), dict) else {}
    micro = trainer.get("microbatch_size", 1)  # fit's default
    micro = micro if isinstance(micro, int) and micro > 0 else 1
    for line in view.stats_lines(dd, ctx_len, micro, cfg.packing_enable):
        click.echo(line)
    tokenizer = load_tokenizer(cfg.tokenizer, cfg)
    ds = dd[split]
    click.echo(view.legend(color), color=color)
    for i in range(min(samples, len(ds))):
        row = ds[i]
        ids, mask = row["input_ids"], row["loss_mask"]
        shown = min(len(ids), max_tokens)
        more = f", first {shown} shown" if shown < len(ids) else ""
        starts = row.get("record_starts") or ()  # a reset-packed sample (data/pack.py)
        records = f", {len(starts)} packed records" if len(starts) > 1 else ""
        click.echo(f"\n── {split} sample {i}: {len(ids)} tokens, {sum(mask[1:])} learned{records}{more} ──")
        text = view.render_sample(ids[:shown], mask[:shown], tokenizer.decode, color, ctx_len, starts)
        click.echo(text, color=color)
