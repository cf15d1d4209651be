"""``rwkv-plug eval MODEL [CONFIG_OR_DATA]``: loss by token position, the passkey probe, a table and a PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rwkv_plug.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rwkv_plug.data.options import DataConfig


def load_eval_model(path: str, dtype: str, kernel: str, device: str):
    """A model file (``.pth``) or a training checkpoint (``.ckpt`` or a run/checkpoint folder), in eval mode."""
    from rwkv_plug.models import load_model
    from rwkv_plug.models.export import checkpoint_safe_types, find_checkpoint, strip_to_model
    from rwkv_plug.models.io import read_torch_file

    p = Path(path)
    if p.is_dir() or p.suffix == ".ckpt":
        src = find_checkpoint(p)
        source = strip_to_model(read_torch_file(src, safe_types=checkpoint_safe_types()), f"checkpoint '{src}'")
    else:
        source = path
    return load_model(source, kernel=kernel, dtype=dtype).to(device).eval()


def _floats(text: str, what: str, kind=float) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--{what} takes numbers separated by commas, got {text!r}") from None
    if not values:
        raise ConfigError(f"--{what} is empty; give numbers separated by commas")
    return values


def _data(spec: str, overrides: dict[str, Any], log) -> tuple[Any, dict[str, Any] | None, int | None]:
    """(the dataset, the config's data section or None, the config's model.ctx_len or None)."""
    p = Path(spec)
    if p.is_dir():
        import datasets

        if not (p / "dataset_dict.json").is_file():
            raise DataError(f"{p} is no built dataset (no dataset_dict.json); give a data_path that "
                            "`rwkv-plug preload` made, or the fit config")
        if overrides:
            raise ConfigError("--SECTION.KEY overrides apply to a config file, not to a dataset folder")
        return datasets.load_from_disk(str(p)), None, None
    from rwkv_plug.core.config import Problems, load_yaml
    from rwkv_plug.core.option_types import yaml_number
    from rwkv_plug.core.overrides import apply_overrides
    from rwkv_plug.data.options import data_config, resolve_data_config
    from rwkv_plug.data.pipeline import prepare_dataset

    raw = apply_overrides(load_yaml(p), overrides)
    problems = Problems(f"{p} (with --{', --'.join(overrides)})" if overrides else str(p))
    data = resolve_data_config(raw.get("data") if isinstance(raw.get("data"), dict) else None, problems)
    problems.raise_if_any()
    data = data_config(data)
    ctx = (raw.get("model") or {}).get("ctx_len") if isinstance(raw.get("model"), dict) else None
    ctx = yaml_number(ctx) if isinstance(ctx, str) else ctx
    dataset, _ = prepare_dataset(data, log=log)
    return dataset, data, int(ctx) if isinstance(ctx, (int, float)) and ctx >= 1 else None


def _rows(dataset, split: str | None, limit: int | None):
    names = list(dataset.keys()) if hasattr(dataset, "keys") else []
    if split is None:
        split = "test" if "test" in names and len(dataset["test"]) else "train"
    if split not in names:
        raise DataError(f"the dataset has no '{split}' split (it has {', '.join(names) or 'none'})")
    rows = dataset[split]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return split, rows


def plot_eval(buckets, passkey, out: Path) -> None:
    """Loss by position (left) and the passkey accuracy heatmap (right, when run), to ``out`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rwkv_plug.core.atomic import atomic_write

    panels = 2 if passkey else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    try:
        ax = axes[0][0]
        shown = [b for b in buckets if b.tokens]
        if shown:
            ax.plot([math.sqrt(max(b.start, 1) * b.end) for b in shown], [b.loss for b in shown], "o-",
                    label="mean loss")
            ax.set_xscale("log", base=2)
        ax.set_xlabel("token position (tokens seen)")
        ax.set_ylabel("mean loss")
        ax.set_title("loss by position")
        ax.grid(alpha=0.3)
        if passkey:
            lengths = sorted({r.length for r in passkey})
            depths = sorted({r.depth for r in passkey})
            grid = [[next(r.accuracy for r in passkey if r.length == n and r.depth == d) for n in lengths]
                    for d in depths]
            hm = axes[0][1]
            im = hm.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
            hm.set_xticks(range(len(lengths)), [str(n) for n in lengths])
            hm.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
            for i, row in enumerate(grid):
                for j, acc in enumerate(row):
                    hm.text(j, i, f"{acc:.0%}", ha="center", va="center", fontsize=8)
            hm.set_xlabel("prompt length (tokens)")
            hm.set_ylabel("key depth")
            hm.set_title("passkey accuracy")
            fig.colorbar(im, ax=hm)
        fig.tight_layout()
        atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def _bucket_name(start: int, end: int) -> str:
    def short(n: int) -> str:
        return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)

    return f"{short(start)}-{short(end)}"


@click.command("eval", short_help="Loss by token position and a passkey probe for a model.",
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("words", metavar="MODEL [CONFIG_OR_DATA] [--SECTION.KEY VALUE]...", nargs=-1, type=click.UNPROCESSED)
@click.option("--split", default=None, help="Dataset split to evaluate (default: test when it has rows, else train).")
@click.option("--ctx-len", type=click.IntRange(min=1), default=None,
              help="Chunk length of the state-carrying forward (default: the config's model.ctx_len, else 2048).")
@click.option("--bucket", type=click.IntRange(min=1), default=512, show_default=True,
              help="Width of the first position bucket; each next one is twice as wide.")
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Evaluate at most this many samples.")
@click.option("--microbatch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Samples per forward pass.")
@click.option("--passkey/--no-passkey", default=True, show_default=True, help="Run the passkey-retrieval probe.")
@click.option("--passkey-lengths", default="512,1024,2048,4096", show_default=True,
              help="Prompt lengths in tokens (comma separated).")
@click.option("--passkey-depths", default="0,0.25,0.5,0.75,1", show_default=True,
              help="Where the key sits in the filler: 0 start, 1 end (comma separated).")
@click.option("--passkey-trials", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random keys per length and depth.")
@click.option("--passkey-digits", type=click.IntRange(1, 18), default=5, show_default=True,
              help="Digits of each key.")
@click.option("--tokenizer", default=None,
              help="Tokenizer for the probe (default: the config's data.tokenizer, else by vocab size).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--dtype", default="fp32", show_default=True, metavar="fp32|bf16|fp16", help="Model weight dtype.")
@click.option("--kernel", default="auto", show_default=True, help="WKV kernel name.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The PNG to write (default: eval.png next to the model).")
def eval_command(words: Sequence[str], split, ctx_len, bucket, max_samples, microbatch_size, passkey,
                 passkey_lengths, passkey_depths, passkey_trials, passkey_digits, tokenizer, device, dtype,
                 kernel, out) -> None:
    """Evaluate MODEL (a .pth model file, or a training checkpoint or its folder): the mean loss by token
    position bucket (0-512, 512-1k, 1k-2k, ...) over CONFIG_OR_DATA's samples (a fit config, whose data is
    built or reused as fit does, or a built data_path folder), run in chunks with the state carried as in
    training; and the passkey-retrieval probe over a grid of prompt lengths and key depths.
    Prints a table and writes a PNG. Config keys can be overridden as with fit (--data.data_path x/)."""
    import torch

    from rwkv_plug.core.config import CONFIG_SECTIONS
    from rwkv_plug.core.overrides import split_overrides
    from rwkv_plug.evaluation.passkey import build_case, run_probe
    from rwkv_plug.evaluation.positions import loss_by_position

    positional, overrides = split_overrides(words, CONFIG_SECTIONS)
    if not positional or len(positional) > 2:
        raise click.UsageError("give MODEL and optionally CONFIG_OR_DATA: rwkv-plug eval MODEL [CONFIG_OR_DATA]")
    model_path, data_spec = positional[0], (positional[1] if len(positional) > 1 else None)
    lengths = _floats(passkey_lengths, "passkey-lengths", int)
    depths = _floats(passkey_depths, "passkey-depths")
    if any(not 0 <= d <= 1 for d in depths):
        raise ConfigError(f"--passkey-depths must lie within 0 and 1, got {passkey_depths}")
    if data_spec is None and not passkey:
        raise click.UsageError("nothing to do: give CONFIG_OR_DATA for the loss by position, or drop --no-passkey")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    model = load_eval_model(model_path, dtype, kernel, device)
    data_cfg, buckets, results, cfg_ctx, tok = None, [], [], None, None
    if data_spec is not None:
        dataset, data_cfg, cfg_ctx = _data(data_spec, overrides, log)
    if passkey:  # its refusals before the long part
        tok = _probe_tokenizer(tokenizer, data_cfg, model)
        try:
            build_case(tok, min(lengths), 0.0, "0" * passkey_digits)
        except ValueError as exc:  # a length too short for the prompt's fixed parts
            raise ConfigError(f"--passkey-lengths: {exc}; give longer lengths") from None
    ctx_len = ctx_len or cfg_ctx or 2048
    if data_spec is not None:
        split, rows = _rows(dataset, split, max_samples)
        log(f"loss by position: {len(rows)} samples of the {split} split, chunks of {ctx_len} tokens")
        buckets = loss_by_position(model, rows, ctx_len, first_bucket=bucket, microbatch_size=microbatch_size,
                                   device=device)
        click.echo(f"{'positions':>14}  {'tokens':>10}  {'mean loss':>9}")
        for b in buckets:
            click.echo(f"{_bucket_name(b.start, b.end):>14}  {b.tokens:>10,}  "
                       f"{b.loss:>9.4f}" if b.tokens else f"{_bucket_name(b.start, b.end):>14}  {0:>10}  {'-':>9}")
    if tok is not None:
        log(f"passkey probe: lengths {', '.join(map(str, lengths))}; depths {', '.join(f'{d:g}' for d in depths)}; "
            f"{passkey_trials} keys each")
        results = run_probe(model, tok, lengths, depths, trials=passkey_trials, digits=passkey_digits,
                            ctx_len=ctx_len)
        click.echo("passkey accuracy (rows: key depth; columns: prompt length in tokens)")
        click.echo(f"{'depth':>6}" + "".join(f"{n:>8}" for n in lengths))
        for d in depths:
            accs = [next(r.accuracy for r in results if r.length == n and r.depth == d) for n in lengths]
            click.echo(f"{d:>6.0%}" + "".join(f"{a:>8.0%}" for a in accs))
        total = sum(r.correct for r in results), sum(r.trials for r in results)
        click.echo(f"passkey overall: {total[0]}/{total[1]} ({total[0] / total[1]:.0%})")
    target = Path(out) if out else _default_out(model_path)
    plot_eval(buckets, results, target)
    click.echo(f"plot: {target}")


def _default_out(model_path: str) -> Path:
    p = Path(model_path)
    return p / "eval.png" if p.is_dir() else p.with_name(f"{p.stem}-eval.png")


def _probe_tokenizer(name: str | None, data_cfg: "DataConfig | None", model):
    from rwkv_plug.core.errors import TokenizerError
    from rwkv_plug.data.tokenizer import load_tokenizer
    from rwkv_plug.models.commands import default_tokenizer

    if name is None and data_cfg is not None:
        tok = load_tokenizer(data_cfg.tokenizer, data_cfg)
    else:
        tok = load_tokenizer(name or default_tokenizer(model.vocab_size), data_cfg or {})
    if tok.vocab_size > model.vocab_size:
        raise TokenizerError(f"tokenizer '{tok.name}' has {tok.vocab_size} ids but the model has vocab_size "
                             f"{model.vocab_size}; pick the tokenizer the model was trained with (--tokenizer)")
    return tok
