"""The ``init-model``, ``export`` and ``generate`` commands.

Each command validates its arguments and raises ``RwkvPlugError`` subclasses;
the CLI turns them into one line and a non-zero exit.
"""

from __future__ import annotations

import math

from pathlib import Path

import click

from rwkv_plug.core.errors import ConfigError, ModelError

#: Named vocabularies accepted by ``--vocab_size`` (and their embedding rows).
VOCABS = {"neox": 50277, "world": 65536}


def parse_vocab(value: str) -> int:
    key = str(value).strip().lower()
    if key in VOCABS:
        return VOCABS[key]
    try:
        n = int(key)
    except ValueError:
        raise ConfigError(
            f"--vocab_size '{value}' is not a number nor one of: {', '.join(VOCABS)}"
        ) from None
    if n < 1:
        raise ConfigError(f"--vocab_size must be at least 1, got {n}")
    return n


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


#: What ``init-model`` prints for each built-in architecture.
ARCH_TITLES = {"rwkv5": "RWKV-v5 (x052)", "rwkv7": "RWKV-7 (x070)"}
#: ``init-model`` flags for the x070 low-rank widths, by LoraDims field.
LORA_FLAGS = {"decay": "--lora-decay", "a": "--lora-a", "value": "--lora-value", "gate": "--lora-gate"}


def _lora_option(field: str, what: str):
    flag = LORA_FLAGS[field]
    return click.option(flag, f"lora_{field}", type=click.IntRange(min=1), default=None,
                        help=f"rwkv7: width of the {what} low-rank projection (default from n_embd).")


@click.command("init-model", short_help="Write a freshly initialised model file.")
@click.option("--arch", default="rwkv5", show_default=True, metavar="rwkv5|rwkv7",
              help="Architecture: rwkv5 (RWKV-v5, x052 keys) or rwkv7 (RWKV-7, x070 keys).")
@click.option("--n_layer", "--n-layer", "n_layer", type=int, required=True, help="Number of blocks.")
@click.option("--n_embd", "--n-embd", "n_embd", type=int, required=True, help="Width C (multiple of 64).")
@click.option(
    "--vocab_size", "--vocab-size", "vocab_size", default="neox", show_default=True,
    help="neox (50277), world (65536) or a number of tokens.",
)
@_lora_option("decay", "decay (w1/w2)")
@_lora_option("a", "in-context learning rate (a1/a2)")
@_lora_option("value", "value residual (v1/v2)")
@_lora_option("gate", "gate (g1/g2)")
@click.option("--skip-if-exists/--no-skip-if-exists", default=False, help="Leave an existing OUT untouched.")
@click.option("--emb-scale", "--emb_scale", "emb_scale", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              callback=lambda ctx, param, value: _finite(value), help="Embeddings start uniform in [-F, F].")
@click.option("--seed", type=int, default=None, help="Random seed, for a reproducible file.")
@click.option("--safe-init/--no-safe-init", default=True, hidden=True,
              help="Accepted for compatibility; writes are always atomic.")
@click.argument("out", type=click.Path(dir_okay=False))
def init_model_cmd(arch, n_layer, n_embd, vocab_size, lora_decay, lora_a, lora_value, lora_gate, skip_if_exists,
                   emb_scale, seed, safe_init, out) -> None:
    """Write a freshly initialised model file (bf16, official keys: x052 for rwkv5, x070 for rwkv7)."""
    from rwkv_plug.core import plugins
    from rwkv_plug.models.init import count_params
    from rwkv_plug.models.io import save_state_dict

    arch_cls = plugins.models().get(arch)
    vocab = parse_vocab(vocab_size)
    options = _lora_options(arch, n_embd, {"decay": lora_decay, "a": lora_a, "value": lora_value,
                                           "gate": lora_gate})
    if Path(out).exists() and skip_if_exists:
        click.echo(f"{out} already exists; left untouched (--skip-if-exists)")
        differs = _size_difference(out, arch, {"n_layer": n_layer, "n_embd": n_embd, "vocab_size": vocab})
        if differs:
            click.echo(f"warning: {out} {differs}; delete it, or drop --skip-if-exists, to write the model "
                       "asked for", err=True)
        return
    try:
        sd = arch_cls.init_state_dict(n_layer, n_embd, vocab, emb_scale=emb_scale, seed=seed, **options)
    except ModelError as exc:  # here it means a flag was typed wrong
        raise ConfigError(f"init-model: {exc}") from None
    path = save_state_dict(sd, out)
    click.echo(
        f"wrote {path}: {ARCH_TITLES.get(arch, arch)} L{n_layer}-D{n_embd}, vocab {vocab}, "
        f"{count_params(sd) / 1e6:.2f}M parameters, bf16"
    )


def _lora_options(arch: str, n_embd: int, given: dict[str, int | None]) -> dict:
    """``{"lora": LoraDims}`` for rwkv7 (unset widths from the default); nothing for others."""
    set_flags = [LORA_FLAGS[f] for f, v in given.items() if v is not None]
    if arch != "rwkv7":
        if set_flags:
            raise ConfigError(f"init-model: {', '.join(set_flags)} only apply to --arch rwkv7")
        return {}
    if not set_flags:
        return {}
    from dataclasses import replace

    from rwkv_plug.models.arch7 import default_lora

    return {"lora": replace(default_lora(n_embd), **{f: v for f, v in given.items() if v is not None})}


def _size_difference(path: str, arch: str, asked: dict[str, int]) -> str:
    """How the model file at ``path`` differs from the model ``asked`` for ("" when it does not)."""
    from rwkv_plug.models.io import load_state_dict
    from rwkv_plug.models.loading import detect_arch

    try:
        sd = load_state_dict(path)
        found = detect_arch(sd, f"'{path}'")
        dims = found.check_complete(sd, f"'{path}'")
    except (ModelError, ConfigError) as exc:
        return f"is not a model file it can check ({exc})"
    if found.name != arch:
        return f"holds an {found.name} model (not {arch})"
    diff = [f"{key} {dims[key]} (not {want})" for key, want in asked.items() if dims.get(key, want) != want]
    return "has " + ", ".join(diff) if diff else ""


@click.command("export", short_help="Turn a training checkpoint into a model file.")
@click.argument("ckpt", type=click.Path())
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--dtype", default="bf16", show_default=True, metavar="bf16|fp32",
              help="Weight dtype of the exported file.")
@click.option("--merge", is_flag=True, default=False,
              help="LoRA checkpoint: write the base model with the adapters merged (else the adapter folder).")
@click.option("--base", "base", default=None, type=click.Path(dir_okay=False),
              help="LoRA checkpoint: the base model file, if not where training read it.")
def export_cmd(ckpt, out, dtype, merge, base) -> None:
    """Turn a training checkpoint (file or folder) into an official .pth model (x052 or x070 keys).

    A state-tuning checkpoint exports its state file; a LoRA one its adapter folder (peft
    format), or with --merge the merged model.
    """
    from rwkv_plug.models.export import export_checkpoint
    from rwkv_plug.models.io import parse_dtype

    parse_dtype(dtype, allowed=("bf16", "fp32"))  # fail before reading a big file
    src, path, dims = export_checkpoint(ckpt, out, dtype, merge=merge, base=base)
    sizes = (f" L{dims['n_layer']}-D{dims['n_embd']}, vocab {dims['vocab_size']},"
             if {"n_layer", "n_embd", "vocab_size"} <= set(dims) else "")  # a plugin's dims may be {}
    if dims.get("kind") and dims["kind"] != "merged model":
        click.echo(f"exported {src} -> {path}: {dims['arch']} {dims['kind']}")
        return
    kind = " merged model," if dims.get("kind") else ""
    click.echo(f"exported {src} -> {path}: {dims['arch']}{kind}{sizes} {dtype}")


def default_tokenizer(vocab_size: int) -> str:
    from rwkv_plug.core.errors import TokenizerError

    for name, size in (("world", 65536), ("neox", 50277)):
        if vocab_size == size:
            return name
    raise TokenizerError(
        f"the model has vocab size {vocab_size}, which is neither world (65536) nor neox (50277); "
        "name its tokenizer with --tokenizer"
    )


@click.command("generate", short_help="Continue a prompt with a model file.")
@click.argument("model_path", metavar="MODEL.pth", type=click.Path())
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--tokenizer", default=None, help="world, neox or a tokenizer name (default: from vocab size).")
@click.option("--max-tokens", type=click.IntRange(min=0), default=100, show_default=True,
              help="Tokens to generate after the prompt.")
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="0 means greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1), default=0.7, show_default=True,
              help="Sample from the smallest set of tokens whose probabilities sum to this.")
@click.option("--seed", type=int, default=None, help="Random seed for sampling.")
@click.option("--chunk-len", type=click.IntRange(min=1), default=512, show_default=True,
              help="Prompt tokens per forward call.")
@click.option("--kernel", default="auto", show_default=True, help="WKV kernel name.")
@click.option("--state", "state_file", default=None, type=click.Path(),
              help="Start from this tuned state file (`rwkv-plug export` of a model.tuning: state run).")
@click.option("--adapter", default=None, type=click.Path(),
              help="Apply this LoRA adapter folder (`rwkv-plug export` of a model.tuning: lora run).")
def generate_cmd(model_path, prompt, tokenizer, max_tokens, temperature, top_p, seed, chunk_len, kernel,
                 state_file, adapter):
    """Continue a prompt with a model file, streaming text to stdout."""
    import torch

    from rwkv_plug.core.errors import TokenizerError
    from rwkv_plug.data.tokenizer import load_tokenizer
    from rwkv_plug.models import load_model
    from rwkv_plug.models.sampling import StreamDecoder, generate
    from rwkv_plug.models.vocab import PADDING_ROWS

    model = load_model(model_path, kernel=kernel, dtype=torch.float32).eval()
    if adapter:
        from rwkv_plug.models.lora import load_adapter

        load_adapter(model, adapter, trainable=False)
    if state_file:
        from rwkv_plug.models.state_tuning import load_state_file

        load_state_file(model, state_file)
    model.eval()  # the adapter's layers too (no LoRA dropout)
    tok = load_tokenizer(tokenizer or default_tokenizer(model.vocab_size), {})
    if tok.vocab_size > model.vocab_size:
        raise TokenizerError(
            f"tokenizer '{tok.name}' has {tok.vocab_size} ids but {model_path} has vocab_size "
            f"{model.vocab_size}; pick the tokenizer the model was trained with (--tokenizer)")
    if model.vocab_size - tok.vocab_size >= PADDING_ROWS:
        click.echo(f"warning: tokenizer '{tok.name}' has {tok.vocab_size} ids but {model_path} has vocab_size "
                   f"{model.vocab_size}; the model was most likely made for another tokenizer", err=True)
    ids = tok.encode(prompt)
    if not ids:
        raise TokenizerError("--prompt encodes to no tokens; give some text")
    if max(ids) >= model.vocab_size:
        raise TokenizerError(
            f"tokenizer '{tok.name}' produced id {max(ids)}, beyond the model's vocab "
            f"{model.vocab_size}; pick the tokenizer the model was trained with"
        )
    # what follows the prompt is decode(prompt ids + new ids) less decode(prompt ids)
    stream = StreamDecoder(tok.decode, context=ids, on_silent=lambda note: click.echo("\n" + note, err=True))
    click.echo(prompt, nl=False)

    def show(token: int) -> None:
        click.echo(stream.push(token), nl=False)

    generate(model, ids, max_tokens, temperature, top_p, seed, chunk_len, on_token=show)
    click.echo(stream.flush())
