"""Infinite-context training: a sample runs as chunks of ``ctx_len`` with state carried.

Every sample starts from the model's zero state. Its chunks run in order,
each starting from the previous chunk's final state (token shift and WKV).

Exact mode (``bptt_truncated_learning: false``) gives the gradient of the
whole sequence at once, at about 2 forward + 1 backward passes, keeping no
activations between the passes but one start state per chunk, so memory
grows linearly with the sample length by exactly the stored states' bytes
(the formula is in :mod:`rwkv_plug.training.chunk_states`):

* forward: run every chunk without autograd, keeping only each chunk's
  start state (copied into a few preallocated buffers) and the loss; the
  last chunk then runs with ordinary autograd, so it is not run twice;
* backward, in reverse chunk order: recompute chunk ``i`` from its stored
  start state with autograd on, and take the gradient of
  ``chunk_loss_i * g + <state_out_i, dL/dstate_out_i>`` with respect to the
  parameters and the start state. The start-state gradient is
  ``dL/dstate_out_{i-1}`` for the next (earlier) chunk.

The parameters are inputs of one autograd Function, so the outer backward
writes each ``.grad`` once per step. That keeps Lightning's gradient
accumulation and DDP's gradient hooks working unchanged.

Truncated mode detaches the state between chunks: the same machinery with
the state gradient dropped. ``learning_range r > 0`` puts only the last
``r`` real chunks' losses into the trained loss; in exact mode their
gradient still flows back through the carried state into the earlier
chunks (it is the exact gradient of that partial loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rwkv_plug.training.chunk_states import ChunkStore
from rwkv_plug.training.loss import chunk_loss

State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class BpttSettings:
    """How a sample is cut into chunks and how gradients cross them."""

    ctx_len: int
    #: ``model.bptt_learning``: False runs all chunks in one plain autograd graph.
    learning: bool = True
    #: ``model.bptt_truncated_learning``: detach the state between chunks.
    truncated: bool = False
    #: ``model.bptt_learning_range``: train on the last r chunks only (-1: all).
    learning_range: int = -1
    l2wrap: bool = True


@dataclass
class SequenceLoss:
    """What one microbatch produced."""

    #: The loss to backpropagate (learning chunks only); has a graph when training.
    loss: torch.Tensor
    #: The mean masked CE over every chunk (for logging), detached.
    data_loss: torch.Tensor
    #: Target tokens with mask 1 in the learning chunks.
    trained_tokens: int
    #: Real chunks, and chunks run (real + filler, after the cross-rank max).
    chunks: int
    chunks_run: int


@dataclass
class _Job:
    model: torch.nn.Module
    inputs: list[torch.Tensor]  # per chunk (B, ctx_len)
    targets: list[torch.Tensor]
    masks: list[torch.Tensor]
    learn: list[bool]
    denom: torch.Tensor
    batch: int
    truncated: bool
    l2wrap: bool


def _rng_state(device: torch.device) -> tuple[torch.Tensor, ...]:
    """(cpu generator state,) plus the CUDA one on a CUDA device."""
    if device.type == "cuda":
        return torch.get_rng_state(), torch.cuda.get_rng_state(device)
    return (torch.get_rng_state(),)


def _set_rng_state(state: tuple[torch.Tensor, ...], device: torch.device) -> None:
    # clone: the stored states are views into one buffer, and set_rng_state
    # misreads (crashes on) a view with a storage offset
    torch.set_rng_state(state[0].clone())
    if len(state) > 1:
        torch.cuda.set_rng_state(state[1].clone(), device)


class _ChunkedPrefix(torch.autograd.Function):
    """Every chunk but the last: their loss and the state they hand over.

    Outputs ``(train_loss, data_loss, *state)``. The last chunk then runs
    with ordinary autograd from that state, so a one-chunk sample costs one
    forward and one backward, and the state gradient arrives here as the
    gradient of the state outputs. Backward recomputes chunk by chunk in
    reverse from the stored start states.
    """

    @staticmethod
    def forward(ctx, job: _Job, *params):  # noqa: D102
        device = job.inputs[0].device
        # chunk 0 starts from the zero state (made again in backward); chunk i > 0 from
        # slot i - 1, each chunk runs from the stored copy so its own output can be freed
        starts = ChunkStore(len(job.inputs) - 1, "state")
        rngs = ChunkStore(len(job.inputs), "RNG state")
        state = job.model.zero_state(job.batch, device=device)
        train = job.denom.new_zeros(())
        data = job.denom.new_zeros(())
        for i, x in enumerate(job.inputs):
            if i > 0:
                state = starts.put(i - 1, tuple(state))
            rngs.put(i, _rng_state(device))
            logits, state = job.model(x, state)
            part = chunk_loss(logits, job.targets[i], job.masks[i], job.denom, job.batch, False)
            data = data + part
            if job.learn[i]:
                train = train + part
            del logits
        ctx.job, ctx.starts, ctx.rngs = job, starts, rngs
        ctx.autocast = (
            device.type,
            torch.is_autocast_enabled(device.type),
            torch.get_autocast_dtype(device.type),
        )
        ctx.mark_non_differentiable(data)
        return (train, data, *state)

    @staticmethod
    def _recompute(ctx, i: int, g_train, g_state, pass_state: bool):
        """Chunk i again from its start state; returns (objective, start-state inputs)."""
        job: _Job = ctx.job
        device_type, ac_enabled, ac_dtype = ctx.autocast
        device = job.inputs[0].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _set_rng_state(ctx.rngs.get(i), device)  # same dropout masks as the forward pass
            with torch.enable_grad(), torch.autocast(device_type, ac_dtype, enabled=ac_enabled):
                if i > 0:
                    s_in = _as_inputs(ctx.starts.get(i - 1), pass_state)
                else:  # not detached: a trainable start state (model.tuning: state) gets its gradient here
                    s_in = job.model.zero_state(job.batch, device=device)
                logits, s_out = job.model(job.inputs[i], s_in)
                obj = job.denom.new_zeros(())
                if job.learn[i]:
                    part = chunk_loss(logits, job.targets[i], job.masks[i], job.denom, job.batch, job.l2wrap)
                    obj = obj + part * g_train
                if g_state is not None:
                    # <state_out, dL/dstate_out> carries the later chunks' gradient in
                    for so, gs in zip(s_out, g_state):
                        if gs is not None and so.requires_grad:
                            obj = obj + (so * gs.to(so.dtype)).sum()
        return obj, s_in

    @staticmethod
    def backward(ctx, g_train, _g_data, *g_out):  # noqa: D102
        job: _Job = ctx.job
        params = [p for p in job.model.parameters() if p.requires_grad]
        grads: list[torch.Tensor | None] = [None] * len(params)
        g_state: Sequence[torch.Tensor | None] | None = None if job.truncated else g_out
        for i in reversed(range(len(job.inputs))):
            if not job.learn[i] and g_state is None:
                continue  # nothing downstream of this chunk is learned
            pass_state = not job.truncated and i > 0
            obj, s_in = _ChunkedPrefix._recompute(ctx, i, g_train, g_state, pass_state)
            inputs = list(params) + (list(s_in) if pass_state else [])
            if obj.requires_grad:
                got = torch.autograd.grad(obj, inputs, allow_unused=True)
            else:
                got = [None] * len(inputs)
            for j in range(len(params)):
                if got[j] is not None:
                    if grads[j] is None:
                        grads[j] = got[j]
                    else:
                        grads[j].add_(got[j])  # in place: no third copy of the gradients
            g_state = got[len(params):] if pass_state else None
            del obj, got
        ctx.starts = ctx.rngs = None  # free the boundary states
        out = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        return (None, *out)


def _as_inputs(state: State, grad: bool) -> State:
    return tuple(s.detach().requires_grad_(grad) for s in state)


def _pad_to_chunks(ids: torch.Tensor, mask: torch.Tensor, ctx_len: int, chunks: int):
    """Pad (B, L) to ``chunks * ctx_len + 1`` columns with id 0 / mask 0."""
    want = chunks * ctx_len + 1
    extra = want - ids.shape[1]
    if extra > 0:
        ids = torch.nn.functional.pad(ids, (0, extra), value=0)
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
    return ids, mask


def sequence_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    settings: BpttSettings,
    *,
    train: bool,
    sync_chunks: Callable[[int], int] | None = None,
) -> SequenceLoss:
    """Run one microbatch through ``model`` chunk by chunk and return its loss.

    Args:
        model: ``model(idx (B,T), state) -> (logits (B,T,V), state)`` with
            ``model.zero_state(B, device=...)``.
        input_ids: (B, L) token ids; inputs are ``[:, :-1]``, targets ``[:, 1:]``.
        loss_mask: (B, L) target-aligned mask (``loss_mask[:, 1:]`` weights targets).
        train: build gradients (per ``settings``) or just evaluate.
        sync_chunks: maps this rank's chunk count to the count every rank
            runs (an all-reduce MAX under multiple devices); extra chunks are
            filler with mask 0, so they add zero loss and zero gradient.
    """
    ctx_len = settings.ctx_len
    B, L = input_ids.shape
    real = max(1, -(-(L - 1) // ctx_len))
    run = sync_chunks(real) if sync_chunks is not None else real
    # the last real chunk may be shorter than ctx_len (batches are padded to their longest sample
    # only); filler chunks another rank needs follow a full one
    pad = run > real or L < 2
    ids, mask = _pad_to_chunks(input_ids, loss_mask, ctx_len, run) if pad else (input_ids, loss_mask)
    inputs, targets, tmask = ids[:, :-1], ids[:, 1:], mask[:, 1:]
    # fp32 loss arithmetic, or fp64 when the model runs in fp64 (exactness checks)
    fdt = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    denom = tmask.sum().to(fdt).clamp(min=1.0)
    r = settings.learning_range
    first = max(0, real - r) if r > 0 else 0
    learn = [first <= i < real for i in range(run)]
    cut = [slice(i * ctx_len, (i + 1) * ctx_len) for i in range(run)]
    trained = int(sum(int(tmask[:, c].sum()) for c, lrn in zip(cut, learn) if lrn))

    if not train or not settings.learning:
        # evaluation, or bptt_learning: false (one plain graph over every chunk)
        grad = train and torch.is_grad_enabled()
        state = model.zero_state(B, device=ids.device)
        total = denom.new_zeros(())
        with torch.set_grad_enabled(grad):
            for c in cut:
                logits, state = model(inputs[:, c], state)
                total = total + chunk_loss(logits, targets[:, c], tmask[:, c], denom, B, settings.l2wrap and grad)
        if grad:
            trained = int(tmask.sum())
        return SequenceLoss(total, total.detach(), trained, real, run)

    n = len(cut)
    train_loss = denom.new_zeros(())
    data_loss = denom.new_zeros(())
    state = model.zero_state(B, device=ids.device)
    if n > 1:
        job = _Job(
            model=model,
            inputs=[inputs[:, c] for c in cut[:-1]],
            targets=[targets[:, c] for c in cut[:-1]],
            masks=[tmask[:, c] for c in cut[:-1]],
            learn=learn[:-1],
            denom=denom,
            batch=B,
            truncated=settings.truncated,
            l2wrap=settings.l2wrap,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        train_loss, data_loss, *state = _ChunkedPrefix.apply(job, *params)
        state = tuple(s.detach() for s in state) if settings.truncated else tuple(state)
    # the last chunk runs with ordinary autograd from the handed-over state
    c = cut[-1]
    logits, _ = model(inputs[:, c], state)
    last = chunk_loss(logits, targets[:, c], tmask[:, c], denom, B, settings.l2wrap and learn[-1])
    loss = train_loss + last if learn[-1] else train_loss + 0.0 * last
    return SequenceLoss(loss, (data_loss + last).detach(), trained, real, run)
