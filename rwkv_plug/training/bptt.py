"""Infinite-context training: a sample runs as chunks of ``ctx_len`` with state carried.

Every sample starts from the model's zero state. Its chunks run in order,
each starting from the previous chunk's final state (token shift and WKV).

Exact mode (``bptt_truncated_learning: false``) gives the gradient of the
whole sequence at once, at about 2 forward + 1 backward passes, keeping no
activations between the passes but chunk-start states: at most
``model.bptt_kept_states`` of them at once (all with -1), so memory does not
grow with the sample length beyond that budget (the formula is in
:mod:`rwkv_plug.training.chunk_states`):

* forward: run every chunk without autograd, keeping only the start states
  the schedule names (every chunk's when they fit the budget; copied into a
  few preallocated buffers) and the loss; the last chunk then runs with
  ordinary autograd, so it is not run twice;
* backward, in reverse chunk order: rebuild chunk ``i``'s start state if it
  was not kept, by running chunks again without autograd from the nearest
  kept one (binomial checkpointing, :mod:`rwkv_plug.training.recompute_schedule`),
  recompute chunk ``i`` from it with autograd on, and take the gradient of
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

from rwkv_plug.training import recompute_schedule as schedule
from rwkv_plug.training.chunk_states import KeptStarts, kept_slots
from rwkv_plug.training.record_resets import chunk_resets, with_resets
from rwkv_plug.training.sharding import as_input_layout, gathered_parameters
from rwkv_plug.training.head_loss import DEFAULT_HEAD_CHUNK_TOKENS, model_loss, model_state

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
    #: ``model.head_chunk_tokens``: head and loss in chunks of this many tokens (training/head_loss.py);
    #: 0 takes the full (B, T, V) logits
    head_chunk: int = DEFAULT_HEAD_CHUNK_TOKENS
    #: ``model.bptt_kept_states``: chunk-start states kept at once in exact mode (-1: all; "auto":
    #: sized from the weights, recompute_schedule.auto_slots); the others are run again from the
    #: nearest kept one (training/recompute_schedule.py)
    kept_states: int | str = schedule.DEFAULT_KEPT_STATES


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
    head_chunk: int
    kept_states: int | str = -1  # "auto" until the forward sizes it
    #: per chunk: the record starts of packed rows (training/record_resets.py), or None
    resets: list[torch.Tensor | None] | None = None

    def model_at(self, i: int):
        """The model as chunk ``i`` calls it: restarting its state at the chunk's record starts."""
        return with_resets(self.model, self.resets[i] if self.resets else None)


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
    reverse from the stored start states; with a budget of kept states,
    the start states not kept are first rebuilt by running chunks again
    without autograd from the nearest kept one (training/recompute_schedule.py).
    """

    @staticmethod
    def forward(ctx, job: _Job, *params):  # noqa: D102
        device = job.inputs[0].device
        # chunk 0 starts from the zero state (made again in backward); the chunks the schedule
        # names keep their start and RNG state and run from the stored copy, so their input can
        # be freed; the backward rebuilds the others from the nearest kept one
        n = len(job.inputs)
        state = job.model.zero_state(job.batch, device=device)
        rng = _rng_state(device)
        job.kept_states = kept_slots(job.kept_states, job.model, state, rng)  # "auto": sized from the weights
        kept = KeptStarts(schedule.slots_used(n, job.kept_states))
        keep = set(schedule.forward_keeps(n, job.kept_states))
        kept.start(rng)
        train = job.denom.new_zeros(())
        data = job.denom.new_zeros(())
        for i, x in enumerate(job.inputs):
            if i in keep:
                state = kept.keep(i, tuple(state), _rng_state(device))
            part, state = model_loss(job.model_at(i), x, state, job.targets[i], job.masks[i], job.denom,
                                     job.batch, False, job.head_chunk)
            data = data + part
            if job.learn[i]:
                train = train + part
        ctx.job, ctx.kept = job, kept
        ctx.params = params  # FSDP2: this rank's shards (training/sharding.py)
        ctx.autocast = (
            device.type,
            torch.is_autocast_enabled(device.type),
            torch.get_autocast_dtype(device.type),
        )
        ctx.mark_non_differentiable(data)
        return (train, data, *state)

    @staticmethod
    def _run(ctx, start: int, stop: int) -> tuple[State, State]:
        """Chunks ``start .. stop - 1`` again without autograd from the kept start of ``start``.

        Returns the state and the RNG state chunk ``stop`` starts from: the same
        values the forward pass had there (same inputs, same dropout masks).
        """
        job: _Job = ctx.job
        device_type, ac_enabled, ac_dtype = ctx.autocast
        device = job.inputs[0].device
        state, rng = ctx.kept.get(start)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _set_rng_state(rng, device)
            with torch.no_grad(), torch.autocast(device_type, ac_dtype, enabled=ac_enabled):
                if state is None:
                    state = job.model.zero_state(job.batch, device=device)
                for i in range(start, stop):
                    state = model_state(job.model_at(i), job.inputs[i], state)
            return tuple(state), _rng_state(device)

    @staticmethod
    def _recompute(ctx, i: int, start: State | None, rng: State, g_train, g_state, pass_state: bool):
        """Chunk i again from its start state; returns (objective, start-state inputs)."""
        job: _Job = ctx.job
        device_type, ac_enabled, ac_dtype = ctx.autocast
        device = job.inputs[0].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _set_rng_state(rng, device)  # same dropout masks as the forward pass
            with torch.enable_grad(), torch.autocast(device_type, ac_dtype, enabled=ac_enabled):
                if i > 0:
                    s_in = _as_inputs(start, pass_state)
                else:  # not detached: a trainable start state (model.tuning: state) gets its gradient here
                    s_in = job.model.zero_state(job.batch, device=device)
                obj = job.denom.new_zeros(())
                if job.learn[i]:
                    part, s_out = model_loss(job.model_at(i), job.inputs[i], s_in, job.targets[i], job.masks[i],
                                             job.denom, job.batch, job.l2wrap, job.head_chunk)
                    obj = obj + part * g_train
                else:  # only the state gradient passes through: no head, no loss
                    s_out = model_state(job.model_at(i), job.inputs[i], s_in)
                if g_state is not None:
                    # <state_out, dL/dstate_out> carries the later chunks' gradient in
                    for so, gs in zip(s_out, g_state):
                        if gs is not None and so.requires_grad:
                            obj = obj + (so * gs.to(so.dtype)).sum()
        return obj, s_in

    @staticmethod
    def backward(ctx, g_train, _g_data, *g_out):  # noqa: D102
        # sharded parameters (FSDP2): whole for the recomputation, gradients handed back as shards
        with gathered_parameters(ctx.job.model, ctx.params):
            grads = _ChunkedPrefix._backward(ctx, g_train, *g_out)
        params, ctx.params = ctx.params, None
        return (None, *as_input_layout(grads, params))

    @staticmethod
    def _backward(ctx, g_train, *g_out) -> list[torch.Tensor]:
        """Each parameter's gradient (whole, as ``model.parameters()`` are now)."""
        job: _Job = ctx.job
        params = [p for p in job.model.parameters() if p.requires_grad]
        grads: list[torch.Tensor | None] = [None] * len(params)
        g_state: Sequence[torch.Tensor | None] | None = None if job.truncated else g_out
        kept: KeptStarts = ctx.kept
        ran = None  # (chunk, start state, RNG state) made by a Run that kept nothing
        # every chunk gets one Step, in the order n-1 .. 0, each from its kept or rebuilt start
        for act in schedule.backward(len(job.inputs), job.kept_states):
            if isinstance(act, schedule.Drop):
                kept.drop(act.chunk)
                continue
            if isinstance(act, schedule.Run):
                state, rng = _ChunkedPrefix._run(ctx, act.start, act.stop)
                if act.keep:
                    kept.keep(act.stop, state, rng)
                else:
                    ran = (act.stop, state, rng)
                continue
            i = act.chunk
            start, rng = ran[1:] if ran is not None and ran[0] == i else kept.get(i)
            ran = None
            if not job.learn[i] and g_state is None:
                continue  # nothing downstream of this chunk is learned
            pass_state = not job.truncated and i > 0
            obj, s_in = _ChunkedPrefix._recompute(ctx, i, start, rng, g_train, g_state, pass_state)
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
        ctx.kept = None  # free the boundary states
        return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


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
    resets: torch.Tensor | None = None,
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
        resets: (B, L) bool, True at a packed record's first token (``data.packing_state:
            reset``): the state restarts there, in whichever chunk it falls.
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
    if resets is not None:  # cut like the inputs
        resets = torch.nn.functional.pad(resets.bool(), (0, ids.shape[1] - L), value=False)[:, :-1]
    # fp32 loss arithmetic, or fp64 when the model runs in fp64 (exactness checks)
    fdt = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    denom = tmask.sum().to(fdt).clamp(min=1.0)
    r = settings.learning_range
    first = max(0, real - r) if r > 0 else 0
    learn = [first <= i < real for i in range(run)]
    cut = [slice(i * ctx_len, (i + 1) * ctx_len) for i in range(run)]
    chunk_r = [chunk_resets(resets, c) for c in cut]
    trained = int(sum(int(tmask[:, c].sum()) for c, lrn in zip(cut, learn) if lrn))

    if not train or not settings.learning:
        # evaluation, or bptt_learning: false (one plain graph over every chunk)
        grad = train and torch.is_grad_enabled()
        state = model.zero_state(B, device=ids.device)
        total = denom.new_zeros(())
        with torch.set_grad_enabled(grad):
            for c, rs in zip(cut, chunk_r):
                part, state = model_loss(with_resets(model, rs), inputs[:, c], state, targets[:, c], tmask[:, c],
                                         denom, B, settings.l2wrap and grad, settings.head_chunk)
                total = total + part
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
            kept_states=settings.kept_states,
            head_chunk=settings.head_chunk,
            resets=chunk_r[:-1],
        )
        params = [p for p in model.parameters() if p.requires_grad]
        train_loss, data_loss, *state = _ChunkedPrefix.apply(job, *params)
        state = tuple(s.detach() for s in state) if settings.truncated else tuple(state)
    # the last chunk runs with ordinary autograd from the handed-over state
    c = cut[-1]
    last, _ = model_loss(with_resets(model, chunk_r[-1]), inputs[:, c], state, targets[:, c], tmask[:, c], denom, B,
                         settings.l2wrap and learn[-1], settings.head_chunk)
    loss = train_loss + last if learn[-1] else train_loss + 0.0 * last
    return SequenceLoss(loss, (data_loss + last).detach(), trained, real, run)
