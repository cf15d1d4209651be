"""Mean loss by token position: does the loss keep falling as the model sees more context?

Each sample runs as training runs it (:mod:`rwkv_plug.training.bptt`): chunks of
``ctx_len`` tokens, the state carried from one chunk to the next, so a sample of
any length needs one chunk's activations at a time. The cross-entropy of every
target token whose loss-mask bit is 1 is added to the bucket of its position:
position ``p`` means the model had seen ``p`` tokens of the sample (the target is
token ``p``, ``p >= 1``), and buckets double in width: ``[0, 512)``, ``[512, 1024)``,
``[1024, 2048)``, ... up to the longest sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rwkv_plug.training.head_loss import head_weight, token_losses


@dataclass(frozen=True)
class Bucket:
    """Positions ``[start, end)``: their summed loss and how many target tokens they had."""

    start: int
    end: int
    loss_sum: float
    tokens: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else float("nan")


def bucket_of(positions: torch.Tensor, first: int) -> torch.Tensor:
    """Bucket index of each position: 0 for ``[0, first)``, k for ``[first * 2**(k-1), first * 2**k)``."""
    q = positions // first
    k = torch.floor(torch.log2(q.clamp(min=1).double())).long() + 1  # exact for powers of two
    return torch.where(q == 0, torch.zeros_like(k), k)


@torch.no_grad()
def chunked_token_losses(model: torch.nn.Module, ids: torch.Tensor, ctx_len: int) -> torch.Tensor:
    """Per-target cross-entropy (B, L-1) of ``ids`` (B, L), run in chunks of ``ctx_len`` with the state carried."""
    B, L = ids.shape
    inputs, targets = ids[:, :-1], ids[:, 1:]
    state = model.zero_state(B, device=ids.device)
    out = []
    for start in range(0, L - 1, ctx_len):
        x, t = inputs[:, start:start + ctx_len], targets[:, start:start + ctx_len]
        weight = head_weight(model)
        if weight is not None:  # the head in token chunks: no (B, T, V) logits
            h, state = model(x, state, head=False)
            out.append(token_losses(h, weight, t))
            continue
        logits, state = model(x, state)  # (B, T, V)
        flat = logits.reshape(-1, logits.shape[-1])
        if flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()  # CE in at least fp32, as in training
        ce = F.cross_entropy(flat, t.reshape(-1), reduction="none")
        out.append(ce.view(B, -1))
        del logits
    return torch.cat(out, dim=1)


def loss_by_position(
    model: torch.nn.Module,
    rows: Iterable[Mapping[str, Any]],
    ctx_len: int,
    *,
    first_bucket: int = 512,
    microbatch_size: int = 1,
    device: torch.device | str = "cpu",
    on_batch=None,
) -> list[Bucket]:
    """Mean masked loss per position bucket over ``rows`` (``input_ids`` and ``loss_mask`` each).

    Rows are batched ``microbatch_size`` at a time and padded as for training (mask 0, no loss).
    ``on_batch(rows_done)`` is called after each batch (progress).
    """
    from rwkv_plug.training.batches import collate

    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    done, batch = 0, []
    model.eval()

    def run(batch: Sequence[Mapping[str, Any]]) -> None:
        b = collate(batch)
        ids, mask = b["input_ids"].to(device), b["loss_mask"][:, 1:].to(device).bool()
        ce = chunked_token_losses(model, ids, ctx_len)  # (B, L-1): target p = column p - 1
        positions = torch.arange(1, ids.shape[1], device=device).expand_as(ce)
        k = bucket_of(positions[mask], first_bucket)
        for i, (total, n) in enumerate(zip(torch.bincount(k, weights=ce[mask].double()).tolist(),
                                           torch.bincount(k).tolist())):
            if n:
                sums[i] = sums.get(i, 0.0) + total
                counts[i] = counts.get(i, 0) + n

    for row in rows:
        batch.append(row)
        if len(batch) == microbatch_size:
            run(batch)
            done += len(batch)
            batch = []
            if on_batch is not None:
                on_batch(done)
    if batch:
        run(batch)
        if on_batch is not None:
            on_batch(done + len(batch))
    out = []
    for k in range(0, max(counts, default=-1) + 1):
        start = 0 if k == 0 else first_bucket * 2 ** (k - 1)
        out.append(Bucket(start, first_bucket * 2 ** k, sums.get(k, 0.0), counts.get(k, 0)))
    return out
