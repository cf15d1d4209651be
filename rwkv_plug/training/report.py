"""``rwkv-plug report RUN_DIR``: a run's summary table and a PNG of its curves, from its CSV logs."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from rwkv_plug.training.runlogs import RunLog, Series

TRAIN, VALID, LR, TOKENS, RATE = "train/loss", "validation/loss", "train/lr", "train/tokens", "train/tokens_per_sec"


@dataclass
class Summary:
    """What ``report`` prints; ``None`` where the logs do not hold it."""

    steps: int | None
    tokens: float | None
    train_last: tuple[int, float] | None
    train_best: tuple[int, float] | None
    valid_last: tuple[int, float] | None
    valid_best: tuple[int, float] | None
    lr_last: float | None
    #: the median of the logged tokens/s (one value per step, summed over devices)
    tokens_per_sec: float | None
    #: seconds, summed over the log folders (a resumed run has one per start)
    wall_seconds: float | None


def summarize(log: RunLog) -> Summary:
    train, valid, lr, rate = log.get(TRAIN), log.get(VALID), log.get(LR), log.get(RATE)
    steps = max((s.steps[-1] for s in (train, valid) if s.steps), default=None)
    tokens = log.get(TOKENS).last()
    return Summary(
        steps=steps,
        tokens=tokens[1] if tokens else None,
        train_last=train.last(), train_best=train.best(),
        valid_last=valid.last(), valid_best=valid.best(),
        lr_last=lr.values[-1] if lr.values else None,
        tokens_per_sec=statistics.median(rate.values) if rate.values else None,
        wall_seconds=sum(log.wall_seconds) if log.wall_seconds else None,
    )


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _at(value: tuple[int, float] | None) -> str:
    return "-" if value is None else f"{value[1]:.4f} (step {value[0]})"


def table(summary: Summary) -> list[tuple[str, str]]:
    """The summary as (name, value) rows."""
    s = summary
    return [
        ("steps", "-" if s.steps is None else str(s.steps)),
        ("tokens", "-" if s.tokens is None else f"{int(s.tokens):,}"),
        ("train loss, last", _at(s.train_last)),
        ("train loss, best", _at(s.train_best)),
        ("validation loss, last", _at(s.valid_last)),
        ("validation loss, best", _at(s.valid_best)),
        ("learning rate, last", "-" if s.lr_last is None else f"{s.lr_last:.3g}"),
        ("tokens/s (median)", "-" if s.tokens_per_sec is None else f"{s.tokens_per_sec:,.0f}"),
        ("wall time", "-" if s.wall_seconds is None else _duration(s.wall_seconds)),
    ]


def plot_run(log: RunLog, out: str | Path) -> dict[str, Series]:
    """Write the loss curves (train, validation) over the learning rate to ``out`` (PNG), atomically.

    Returns what the figure's lines hold, read back from the axes, by label.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    from rwkv_plug.core.atomic import atomic_write

    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    try:
        for name, label, style in ((TRAIN, "train loss", "-"), (VALID, "validation loss", "o-")):
            s = log.get(name)
            if s.steps:
                ax_loss.plot(s.steps, s.values, style, label=label, markersize=4)
        ax_loss.set_ylabel("loss")
        ax_loss.grid(alpha=0.3)
        if ax_loss.get_lines():
            ax_loss.legend()
        lr = log.get(LR)
        if lr.steps:
            ax_lr.plot(lr.steps, lr.values, color="tab:green", label="learning rate")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("optimizer step")
        ax_lr.grid(alpha=0.3)
        ax_loss.set_title(f"{log.folders[-1].parent.parent.name or log.folders[-1].name}")
        fig.tight_layout()
        drawn = {line.get_label(): Series([int(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
                 for ax in (ax_loss, ax_lr) for line in ax.get_lines()}
        atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return drawn
