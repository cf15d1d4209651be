"""``rwkv-plug plan CONFIG``: what a fit config will train, how long, and the memory it needs.

It reads the config as ``fit`` does, builds or reuses the dataset through
the same path (``data.pipeline.prepare_dataset``, after the same tokenizer
check), and prints: samples, tokens and trained tokens, how many chunks of
``ctx_len`` the samples are cut into, microbatches and optimizer steps per
epoch and for the run, and the peak memory per device estimated term by
term (:mod:`rwkv_plug.training.memory_plan`). It loads no weights (only the
model file's tensor shapes, memory-mapped) and trains nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import click


@dataclass
class DataStats:
    samples: int
    test_samples: int
    tokens: int
    longest: int
    trained_tokens: int
    #: chunks of ctx_len per sample -> samples
    chunk_counts: dict[int, int]


def chunks_of(lengths, ctx_len: int):
    """Chunks each sample runs as (training/bptt.py): ``max(1, ceil((len - 1) / ctx_len))``."""
    import numpy as np

    return np.maximum(1, -(-(lengths - 1) // ctx_len))


def trained_tokens(ds, ctx_len: int, learning_range: int) -> int:
    """Target tokens with loss mask 1, only in the last ``learning_range`` chunks when that is > 0."""
    import numpy as np
    import pyarrow as pa

    total = 0
    for table in ds.with_format("arrow").iter(batch_size=10_000):
        col = table.column("loss_mask")
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        offsets = col.offsets.to_numpy()
        values = col.values.to_numpy(zero_copy_only=False).astype(np.int64)
        starts, ends = offsets[:-1], offsets[1:]
        if learning_range <= 0:  # every target: positions 1.. of each row (masks are target-aligned)
            nonempty = ends > starts
            total += int(values.sum() - values[starts[nonempty]].sum())
            continue
        for s, e in zip(starts, ends):
            real = max(1, -(-(e - s - 1) // ctx_len))
            first = max(0, real - learning_range)
            total += int(values[s + 1 + first * ctx_len : e].sum())
    return total


def data_stats(train, test, ctx_len: int, learning_range: int) -> DataStats:
    import numpy as np

    from rwkv_plug.training.padding import sample_lengths

    lengths = sample_lengths(train)
    counts = np.unique(chunks_of(lengths, ctx_len), return_counts=True)
    return DataStats(
        samples=len(lengths), test_samples=len(test) if test is not None else 0,
        tokens=int(lengths.sum()), longest=int(lengths.max()) if len(lengths) else 0,
        trained_tokens=trained_tokens(train, ctx_len, learning_range),
        chunk_counts={int(c): int(n) for c, n in zip(*counts)},
    )


def histogram(counts: dict[int, int], width: int = 30) -> list[str]:
    """One line per chunk count (powers-of-two buckets when there are many)."""
    if len(counts) > 12:
        buckets: dict[tuple[int, int], int] = {}
        for c, n in counts.items():
            hi = 1 << max(0, (c - 1).bit_length())
            lo = hi // 2 + 1 if hi > 1 else 1
            buckets[(lo, hi)] = buckets.get((lo, hi), 0) + n
        rows = [(f"{lo}-{hi}" if lo != hi else f"{lo}", n) for (lo, hi), n in sorted(buckets.items())]
    else:
        rows = [(str(c), n) for c, n in sorted(counts.items())]
    top = max((n for _, n in rows), default=1)
    return [f"    {label:>11} chunks  {n:>10,}  {'#' * max(1, round(width * n / top))}" for label, n in rows]


def run_steps(batches: int, accumulate: int, max_steps: int | None, max_epochs: int | None) -> tuple[int, str]:
    """(optimizer steps of the run, which limit ends it), as Lightning stops."""
    per_epoch = max(1, -(-batches // accumulate))
    limits = []
    if max_steps is not None and max_steps > 0:
        limits.append((max_steps, "trainer.max_steps"))
    if max_epochs is not None and max_epochs > 0:
        limits.append((max_epochs * per_epoch, f"trainer.max_epochs {max_epochs}"))
    if not limits:  # Lightning's default when neither is set
        limits.append((1000 * per_epoch, "Lightning's default of 1000 epochs (set trainer.max_steps)"))
    return min(limits)


def _device_type(accelerator) -> str:
    import torch

    accel = str(accelerator or "auto").lower()
    if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def _strategy_name(strategy) -> str:
    if isinstance(strategy, dict):
        return str(strategy.get("class_path", "?")).rsplit(".", 1)[-1]
    return str(strategy or "auto") if isinstance(strategy, str) else type(strategy).__name__


def _to_stderr(message: str) -> None:
    click.echo(message, err=True)


def _lora_shape(m) -> dict:
    """StepShape's LoRA fields from the model section: the adapter folder's rank and targets when
    training starts from one (as ``fit`` does), else ``lora_r`` and ``lora_target_modules``."""
    if m.tuning != "lora":
        return {}
    r, targets = m.lora_r, m.lora_target_modules
    if m.lora_adapter:
        from rwkv_plug.models.lora import read_adapter_config

        config = read_adapter_config(m.lora_adapter)
        r, targets = config.r, config.target_modules
    if targets is not None and not isinstance(targets, str):  # peft keeps a list as a set
        targets = tuple(sorted(targets))
    return {"lora_r": int(r), "lora_targets": targets,
            "lora_options": bool(m.lora_options)}


def run_plan(config: str, overrides: dict | None = None, echo: Callable[[str], None] = click.echo,
             log: Callable[[str], None] = _to_stderr):
    """The whole ``plan`` command; returns ``(DataStats, MemoryPlan)``.

    ``echo`` prints the plan (stdout), ``log`` the dataset build's messages (stderr).
    """
    from rwkv_plug.data.pipeline import prepare_dataset
    from rwkv_plug.models.io import load_state_dict
    from rwkv_plug.models.loading import detect_arch
    from rwkv_plug.training.config import load_fit_config
    from rwkv_plug.training.fit import missing_source
    from rwkv_plug.training.memory_plan import StepShape, estimate, human
    from rwkv_plug.models.vocab import check_tokenizer_fits, check_vocab

    cfg = load_fit_config(config, overrides=overrides)
    missing = missing_source(cfg.data)
    if missing:
        from rwkv_plug.core.errors import ConfigError

        raise ConfigError(f"{cfg.path}: {missing}")
    m, t = cfg.model, cfg.trainer
    sd = load_state_dict(m.load_model)  # memory-mapped: only the shapes are read
    arch = detect_arch(sd, f"model file '{m.load_model}'")
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    dims = getattr(arch, "dims", None)  # rwkv5 and rwkv7 read their sizes; else the embedding's rows
    vocab = int(dims(sd)["vocab_size"]) if callable(dims) else int(shapes["emb.weight"][0])
    del sd
    check_tokenizer_fits(cfg.data, vocab, m.load_model)
    dataset, how = prepare_dataset(cfg.data, log=log)  # says whether it built or reused, as in fit
    check_vocab(cfg.data, dataset, vocab, m.load_model, log)
    train, test = dataset["train"], dataset.get("test")
    if cfg.data.dataloader_swap_train_test_split:
        train, test = test, train
    ctx = m.ctx_len
    r = m.bptt_learning_range if m.bptt_learning else -1
    stats = data_stats(train, test, ctx, r)

    echo(f"plan for {cfg.path} (dataset {how}: {cfg.data.data_path})")
    echo("data")
    echo(f"  samples          {stats.samples:,} (test split {stats.test_samples:,})")
    avg = stats.tokens / max(stats.samples, 1)
    echo(f"  tokens           {stats.tokens:,} (average {avg:,.0f} per sample, longest {stats.longest:,})")
    learned = f"in the last {r} chunk(s) of each sample" if r > 0 else "all chunks"
    echo(f"  trained tokens   {stats.trained_tokens:,} (targets with loss mask 1, {learned}) per epoch")
    echo(f"  chunks of ctx_len {ctx} per sample:")
    for line in histogram(stats.chunk_counts):
        echo(line)

    world, micro, accumulate = cfg.world_size, cfg.microbatch_size, cfg.accumulate_grad_batches
    batches = -(-(stats.samples // world) // micro)  # per device; as RwkvTrainingModule.batches_per_epoch
    limit_batches = t.limit_train_batches  # as RwkvTrainingModule.trained_batches_per_epoch
    if isinstance(limit_batches, int) and not isinstance(limit_batches, bool):
        batches = min(batches, limit_batches)
    elif isinstance(limit_batches, float):
        batches = int(batches * limit_batches)
    steps, limit = run_steps(batches, accumulate, t.max_steps, t.max_epochs)
    per_epoch = max(1, -(-batches // accumulate))
    echo("steps")
    echo(f"  batch            microbatch {micro} x devices {world} x accumulate {accumulate} = "
         f"{micro * world * accumulate} samples per optimizer step")
    how_many = (f"trainer.limit_train_batches {limit_batches}" if limit_batches not in (None, 1.0)
                else f"samples // {world} devices / {micro}")
    echo(f"  per epoch        {batches:,} microbatches per device ({how_many}), "
         f"{per_epoch:,} optimizer steps (/ {accumulate}, rounded up)")
    echo(f"  this run         {steps:,} optimizer steps ({steps / per_epoch:.2f} epochs; ends at {limit})")

    longest_chunks = max(stats.chunk_counts, default=1)
    shape = StepShape(
        microbatch=micro, ctx_len=ctx, chunks=longest_chunks, precision=str(t.precision or "32-true"),
        strategy=_strategy_name(t.strategy), devices=world, bptt_learning=m.bptt_learning,
        grad_cp=m.grad_cp, device_type=_device_type(t.accelerator), kernel=str(m.kernel),
        tuning=m.tuning, kept_states=m.bptt_kept_states, head_chunk=m.head_chunk_tokens,
        **_lora_shape(m),
    )
    plan = estimate(arch, shapes, vocab, shape)
    echo(f"memory per device (estimate): {arch.name}, {len(shapes)} tensors, vocab {vocab}; precision "
         f"{shape.precision}, strategy {shape.strategy}, {world} device(s) ({shape.device_type}), tuning "
         f"{shape.tuning}; the longest sample ({longest_chunks} chunks)")
    for line in plan.lines():
        echo(line)
    echo(f"peak per device ~ {human(plan.total)}")
    return stats, plan
