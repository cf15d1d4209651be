"""``rwkv-plug inspect``: dataset statistics and samples rendered for a terminal.

With colour, learned tokens are green and masked ones red, on alternating
background shades so token boundaries show. Without colour (logs, pipes)
token boundaries are ``|``, masked spans are wrapped in ``[[ ]]``, and a line
marks every ctx_len chunk boundary in both modes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click
import numpy as np

from rwkv_plug.data.summary import split_stats

_SHADES = ((38, 38, 38), (72, 72, 72))
BAR_WIDTH = 40


def visible(text: str) -> str:
    """Make newlines and tabs visible while keeping line breaks."""
    return text.replace("\t", "→").replace("\r", "␍").replace("\n", "↵\n")


def histogram(lengths: np.ndarray, bins: int = 10) -> list[str]:
    """Token-length histogram as text bars."""
    if len(lengths) == 0:
        return ["  (no samples)"]
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo == hi:
        return [f"  {lo:>8} tokens  {len(lengths):>8}  {'#' * BAR_WIDTH}"]
    # integer bin edges, at most ``bins`` of them, each at least one token wide
    edges = np.unique(np.linspace(lo, hi + 1, min(bins, hi - lo + 1) + 1).round().astype(np.int64))
    counts, _ = np.histogram(lengths, bins=edges)
    top = max(int(counts.max()), 1)
    lines = []
    for i, c in enumerate(counts):
        a, b = int(edges[i]), int(edges[i + 1]) - 1
        span = f"{a}" if a == b else f"{a}-{b}"
        bar = "#" * max(1 if c else 0, round(BAR_WIDTH * int(c) / top))
        lines.append(f"  {span:>15} {int(c):>8}  {bar}")
    return lines


def stats_lines(dd, ctx_len: int | None, microbatch_size: int | None = None, packing: bool = False) -> list[str]:
    out = []
    for name in dd:
        stats, lengths = split_stats(dd[name])
        ratio = stats.trained_tokens / stats.tokens if stats.tokens else 0.0
        out.append(f"{name}: {stats.samples} samples, {stats.tokens} tokens, "
                   f"{stats.trained_tokens} trained ({ratio:.1%})")
        if len(lengths):
            out.append(f"  length min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}")
            if ctx_len:
                chunks = np.ceil(np.maximum(lengths - 1, 1) / ctx_len).astype(int)
                out.append(f"  ctx_len {ctx_len}: {chunks.mean():.2f} chunks per sample on average, "
                           f"max {chunks.max()}")
        if name == "train" and microbatch_size and len(lengths):  # as fit reports it (dataset order, one device)
            from rwkv_plug.training.padding import padding_line, padding_share

            share = padding_share(lengths, microbatch_size)
            out.append("  " + padding_line(share, microbatch_size, packing, " in the dataset's order"))
        out.append("  token-length histogram:")
        out.extend(histogram(lengths))
    return out


def render_sample(ids: Sequence[int], mask: Sequence[int], decode: Callable[[list[int]], str],
                  color: bool, ctx_len: int | None, record_starts: Sequence[int] = ()) -> str:
    """One sample as text: learned vs masked tokens, token and ctx_len boundaries, and where
    the records of a reset-packed sample start (``record_starts``, data.packing_state: reset)."""
    parts: list[str] = []
    in_masked = False
    starts = {int(s): n for n, s in enumerate(record_starts)}
    for i, (tok, m) in enumerate(zip(ids, mask)):
        if i in starts and i > 0:
            if in_masked and not color:
                parts.append("]]")
                in_masked = False
            line = f"──── record {starts[i] + 1} starts at token {i}: the state resets ────"
            parts.append("\n" + (click.style(line, fg="cyan", bold=True) if color else line) + "\n")
        m = m if i > 0 else 0  # the first token is only context: nothing predicts it
        # Masks are target-aligned: token i is learned by the chunk whose inputs end at token
        # i - 1, so chunk c (from 0) learns tokens c*ctx_len+1 .. (c+1)*ctx_len.
        at_boundary = bool(ctx_len) and i > 1 and (i - 1) % ctx_len == 0
        if at_boundary:
            if in_masked and not color:
                parts.append("]]")
                in_masked = False
            line = f"──── ctx_len boundary: chunk {(i - 1) // ctx_len + 1} learns from token {i} on ────"
            parts.append("\n" + (click.style(line, fg="yellow", bold=True) if color else line) + "\n")
        piece = visible(decode([int(tok)]))
        if color:
            parts.append(click.style(piece, fg="green" if m else "red", bg=_SHADES[i % 2]))
            continue
        if not m and not in_masked:
            parts.append("[[")
            in_masked = True
        elif m and in_masked:
            parts.append("]]")
            in_masked = False
        elif i > 0 and not at_boundary and i not in starts:
            parts.append("|")
        parts.append(piece)
    if in_masked:
        parts.append("]]")
    return "".join(parts)


def legend(color: bool) -> str:
    if color:
        return ("legend: " + click.style("learned", fg="green") + " "
                + click.style("masked", fg="red") + "; background shades alternate per token")
    return "legend: tokens separated by |, masked (not learned) spans in [[ ]], ↵ is a newline"
