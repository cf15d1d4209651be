"""Peak memory per device of a training step, term by term (for ``rwkv-plug plan``).

The estimate is of live tensor bytes (what a CUDA allocator's
``max_memory_allocated`` reports), at the moment of a step where the most
is alive: during the backward of a chunk, when its saved activations, the
loss's saved tensors and the logits' gradients are alive together with the
kept chunk-start states, the weights, the optimizer's moments and the
gradient copies exact BPTT holds (:mod:`rwkv_plug.training.bptt`).

The activations are not a formula with a fudge factor: they are *counted*.
A one- and a two-layer copy of the model file's architecture, at its real
widths, runs one chunk (``microbatch x ctx_len`` tokens) and its loss under
torch's ``FakeTensorMode`` (shapes only, no memory, any size in a second)
with a saved-tensor hook that adds up the bytes of every distinct storage
autograd keeps, parameters excepted. Two layers minus one gives a layer's
share, so ``n_layer`` layers cost ``outside + n_layer * per_layer``. This
works for any registered architecture that builds from a state dict. The
WKV op is counted as the torch kernel keeps it (the kernel used on the
CPU); on CUDA a fused kernel (triton, cuda, fla) is counted as a custom
autograd Function that keeps its inputs and the start and final states
(what ``kernels/wkv5/fused.py`` keeps), which is an assumption for wkv7.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from rwkv_plug.training.head_loss import DEFAULT_HEAD_CHUNK_TOKENS
from rwkv_plug.training.recompute_schedule import DEFAULT_KEPT_STATES, auto_slots, extra_runs, is_auto, slots_used

#: trainer.strategy names whose parameters, gradients and optimizer state are sharded over devices
SHARDED = ("fsdp", "deepspeed", "model_parallel", "modelparallel")


@dataclass(frozen=True)
class Term:
    """One line of the estimate: what it is, how it is computed, its bytes."""

    name: str
    formula: str
    nbytes: int


@dataclass
class MemoryPlan:
    terms: list[Term]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(t.nbytes for t in self.terms)

    def lines(self) -> list[str]:
        width = max(len(t.name) for t in self.terms)
        out = [f"  {t.name:<{width}}  {human(t.nbytes):>10}  = {t.formula}" for t in self.terms]
        out.append(f"  {'total':<{width}}  {human(self.total):>10}")
        return out + [f"  note: {n}" for n in self.notes]


@dataclass(frozen=True)
class StepShape:
    """What a training step looks like on one device."""

    microbatch: int
    ctx_len: int
    #: chunks of the longest training sample (its kept states set the peak)
    chunks: int
    #: Lightning's trainer.precision (``32-true``, ``bf16-mixed``, ``bf16-true`` ...)
    precision: str = "32-true"
    strategy: str = "auto"
    devices: int = 1
    #: model.bptt_learning (False: one graph over every chunk, no kept states)
    bptt_learning: bool = True
    grad_cp: bool = False
    #: where the WKV op runs: ``cpu`` counts the torch kernel, ``cuda`` a fused one
    device_type: str = "cpu"
    #: model.kernel
    kernel: str = "auto"
    #: model.tuning: ``full`` trains every weight, ``state`` only a WKV start state per layer,
    #: ``lora`` only the adapters of ``lora_targets`` (None: every linear layer in the blocks) at rank ``lora_r``
    tuning: str = "full"
    lora_r: int = 32
    lora_targets: tuple[str, ...] | str | None = None
    #: model.lora_options were given (e.g. DoRA's magnitudes): trained parameters not counted here
    lora_options: bool = False
    #: model.bptt_kept_states: chunk-start states exact BPTT keeps at once (-1: all; "auto": sized from the weights)
    kept_states: int | str = DEFAULT_KEPT_STATES
    #: model.head_chunk_tokens: the head and loss run this many tokens at a time (0: full logits)
    head_chunk: int = DEFAULT_HEAD_CHUNK_TOKENS


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def precision_dtypes(precision: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(parameter dtype, autocast dtype or None) of a Lightning precision setting."""
    p = str(precision).lower()
    low = torch.bfloat16 if "bf16" in p else torch.float16 if "16" in p else None
    if "64" in p:
        return torch.float64, None
    if low is None:
        return torch.float32, None
    return (low, None) if p.endswith("-true") else (torch.float32, low)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# -- counting saved activations --------------------------------------------------
class _Saved:
    """A saved-tensor hook that sums the bytes of distinct storages, some excluded."""

    def __init__(self, exclude) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        self.exclude = {StorageWeakRef(t.untyped_storage()).cdata for t in exclude}
        self.seen: dict[int, int] = {}
        self._alive: list[torch.Tensor] = []

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = self._ref(t.untyped_storage()).cdata
        if key not in self.exclude:
            self.seen.setdefault(key, t.untyped_storage().nbytes())
        self._alive.append(t)  # held, so no storage address is reused (and miscounted) while counting
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


class _FusedStandIn:
    """Counts as a fused kernel keeps: its inputs and the start and final states (fp32)."""

    name = "fused"

    @staticmethod
    def _op(*args):
        class _Op(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *xs):
                s0 = xs[-1]
                sT = s0.new_empty(s0.shape, dtype=torch.promote_types(s0.dtype, torch.float32))
                ctx.save_for_backward(*xs, s0.to(sT.dtype), sT)
                return xs[0].new_empty(xs[0].shape), sT

            @staticmethod
            def backward(ctx, *grads):  # never run: only the forward's saved tensors are counted
                return tuple(None for _ in ctx.saved_tensors[:-2])

        return _Op.apply(*args)

    def wkv5(self, r, k, v, w, u, s0):
        return self._op(r, k, v, w, u, s0)

    def wkv7(self, r, w, k, v, a, b, s0):
        return self._op(r, w, k, v, a, b, s0)


def _kept_layers(shapes: Mapping[str, tuple], n: int) -> dict[str, tuple]:
    """The state dict's shapes for a model of the first ``n`` blocks only."""
    import re

    out = {}
    for key, shape in shapes.items():
        m = re.match(r"blocks\.(\d+)\.", key)
        if m is None or int(m.group(1)) < n:
            out[key] = shape
    return out


def _probe(arch: type, shapes: Mapping[str, tuple], n: int, shape: StepShape):
    """(activation bytes, loss bytes, state bytes) of one chunk of an ``n``-layer copy, counted."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from rwkv_plug.training.loss import chunk_loss, top_logit_pull

    param_dtype, autocast_dtype = precision_dtypes(shape.precision)
    torch_kernel = shape.device_type == "cpu" or shape.kernel == "torch"
    if torch_kernel:
        from rwkv_plug.kernels.backend_torch import TorchKernel

        kernel = TorchKernel()
    else:
        kernel = _FusedStandIn()
    B, T = shape.microbatch, shape.ctx_len
    with FakeTensorMode():
        sd = {k: torch.empty(s, dtype=torch.float32) for k, s in _kept_layers(shapes, n).items()}
        model = arch.from_state_dict(sd, kernel=kernel, dtype=param_dtype, copy=False, source="plan")
        if shape.tuning == "state":  # frozen weights: autograd keeps less (no weight gradients)
            model.requires_grad_(False)
        state = tuple(s.requires_grad_() if s.is_floating_point() else s for s in model.zero_state(B))
        state_bytes = sum(s.numel() * s.element_size() for s in state)
        # the WKV matrices of one row: what state tuning trains
        wkv = sum(s.numel() for s in state if s.dim() == 4) // B
        idx = torch.zeros(B, T, dtype=torch.long)
        saved = _Saved(list(model.parameters()))
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), torch.autocast(
                "cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            if _chunked_head(model, shape):  # the head and loss keep no logits (estimate() counts them)
                model(idx, state, head=False)
                activations, loss = saved.total, 0
            else:
                logits, _ = model(idx, state)
                activations = saved.total
                mask = torch.ones(B, T, dtype=torch.long)
                chunk_loss(logits, idx, mask, torch.ones(()), B, l2wrap=False)
                top_logit_pull(logits, mask, 1e-4)  # the l2wrap term (its strength needs a real mask sum)
                loss = saved.total - activations
    return activations, loss, state_bytes, wkv


def _chunked_head(model, shape: StepShape) -> bool:
    """Whether fit computes this model's head and loss in token chunks (training/head_loss.py)."""
    from rwkv_plug.training.head_loss import head_weight

    return shape.head_chunk > 0 and head_weight(model) is not None


def _per_layer(arch, shapes, n_layer, shape) -> tuple[dict[str, int], dict[str, int]]:
    """(outside the layers, per layer) for activations, loss and state bytes."""
    names = ("act", "loss", "state", "wkv")
    one = _probe(arch, shapes, 1, shape)
    if n_layer < 2:
        return dict(zip(names, one)), dict.fromkeys(names, 0)
    two = _probe(arch, shapes, 2, shape)
    per = [b - a for a, b in zip(one, two)]
    outside = [a - p for a, p in zip(one, per)]
    return dict(zip(names, outside)), dict(zip(names, per))


def _block_count(shapes: Mapping[str, tuple]) -> int:
    import re

    return 1 + max((int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)


def estimate(arch: type, shapes: Mapping[str, tuple], vocab: int, shape: StepShape,
             trainable: int | None = None) -> MemoryPlan:
    """The peak-memory estimate of one device for a model of these state-dict ``shapes``.

    ``trainable`` is the number of trained parameters (default: all of them).
    """
    param_dtype, autocast_dtype = precision_dtypes(shape.precision)
    p_size = _itemsize(param_dtype)
    params = sum(_numel(s) for s in shapes.values())
    L = _block_count(shapes)
    B, T, n = shape.microbatch, shape.ctx_len, max(1, shape.chunks)
    outside, per = _per_layer(arch, shapes, L, shape)
    notes = []
    if trainable is None:
        trainable = params
        if shape.tuning == "state":
            trainable = outside["wkv"] + L * per["wkv"]
        elif shape.tuning == "lora":
            from rwkv_plug.models.lora import planned_trainable

            trainable = planned_trainable(shapes, shape.lora_r, shape.lora_targets)
            if shape.lora_options:
                notes.append("model.lora_options: parameters they add (e.g. DoRA's magnitudes) are not counted")
        elif shape.tuning != "full":
            notes.append(f"model.tuning {shape.tuning}: its trained parameters are not modelled; gradients and "
                         "optimizer state are counted for every weight (an upper bound)")
    sharded = any(s in str(shape.strategy).lower() for s in SHARDED) and shape.devices > 1
    shard = shape.devices if sharded else 1
    split = f" / {shard} devices" if sharded else ""
    terms = [Term("weights", f"{params:,} params x {p_size} B{split}", params * p_size // shard)]

    exact = shape.bptt_learning and n > 1
    copies = min(n, 3) if shape.bptt_learning else 1
    why = {1: "", 2: " (.grad + exact BPTT's running sum)",
           3: " (.grad + exact BPTT's running sum + the recomputed chunk's)"}[copies]
    terms.append(Term("gradients", f"{copies} x {trainable:,} trained params x {p_size} B{split}{why}",
                      copies * trainable * p_size // shard))
    strategy = str(shape.strategy).lower()
    if not sharded and (strategy.startswith("ddp") or (strategy == "auto" and shape.devices > 1)):
        terms.append(Term("ddp buckets", f"{trainable:,} x {p_size} B (DDP's gradient buckets)", trainable * p_size))
    terms.append(Term("optimizer", f"2 Adam moments x {trainable:,} x {p_size} B{split}",
                      2 * trainable * p_size // shard))

    act_size = _itemsize(autocast_dtype or param_dtype)
    kernel = "torch kernel" if shape.device_type == "cpu" or shape.kernel == "torch" else "fused kernel"
    layer_act = per["act"]
    if shape.grad_cp:  # each block keeps its input; one block is recomputed at a time
        kept_input = B * T * _width(shapes) * act_size
        act = outside["act"] + L * kept_input + layer_act
        act_formula = (f"outside {human(outside['act'])} + {L} layers x B*T*C*{act_size} input "
                       f"({human(kept_input)}) + one recomputed layer {human(layer_act)} (grad_cp)")
    else:
        act = outside["act"] + L * layer_act
        # the same sum as (the one-layer copy) + (L - 1) more layers: never a negative "outside"
        # when the first layer keeps less than the others (rwkv7's has no value residual)
        act_formula = (f"one-layer model {human(outside['act'] + layer_act)} + {L - 1} more layers x "
                       f"{human(layer_act)}")
    loss = outside["loss"] + L * per["loss"]
    chunks_held = 1 if shape.bptt_learning else n
    times = f"{n} chunks x (" if chunks_held > 1 else "("
    terms.append(Term("activations", f"{times}{act_formula}; saved tensors counted, B={B}, T={T}, {kernel})",
                      chunks_held * act))
    if shape.head_chunk > 0 and loss == 0:  # chunked head and loss: no (T, V) tensor is held
        rows = min(B * T, shape.head_chunk)
        C = _width(shapes)
        head = rows * vocab * 4 + vocab * C * 4 + B * T * C * act_size
        terms.append(Term("head and loss", f"{rows} x V*4 logits of one head chunk + V*C*4 head-weight gradient "
                          f"+ B*T*C*{act_size} head-input gradient (V={vocab}, C={C}; model.head_chunk_tokens "
                          f"{shape.head_chunk})", chunks_held * head))
    else:
        terms.append(Term("loss", f"{'%d chunks x ' % n if chunks_held > 1 else ''}saved by the loss: log-softmax "
                          f"B*T*V*4 + targets and top-logit indices (counted)", chunks_held * loss))
        terms.append(Term("logits gradient", f"2 x B*T*V*4 = 2 x {B}*{T}*{vocab}*4", 2 * B * T * vocab * 4))
    if exact:
        state = outside["state"] + L * per["state"]
        rng = torch.get_rng_state().numel() + (16 if shape.device_type == "cuda" else 0)
        # K = min(bptt_kept_states, n - 2) kept starts + the one handed to the last chunk;
        # an RNG state per kept start and chunk 0's (training/chunk_states.py)
        slots, budget = shape.kept_states, f"bptt_kept_states {shape.kept_states}"
        if is_auto(slots):  # as fit in 10% of weights + 3 x trained weights, at least 64 (same as training)
            slots = auto_slots(params * p_size, trainable * p_size, state + rng)
            budget = f"bptt_kept_states auto = {slots}"
        elif slots < 0:
            budget = "all"
        kept = slots_used(n - 1, slots) + 1
        terms.append(Term("kept states", f"{kept} chunk starts (min(n - 2, {budget}) + 1, n = {n}) x ({human(state)} "
                          f"state [per layer 2*B*C*itemsize + B*H*N*N*4 for rwkv5] + {rng} B RNG state)",
                          kept * (state + rng)))
        again = extra_runs(n - 1, slots)
        if again:
            notes.append(f"{budget} < n - 2 = {n - 2}: the longest sample's backward "
                         f"runs {again} chunks again without autograd ({again / n:.2f} per chunk) to rebuild the "
                         "start states it did not keep")
    if sharded:
        notes.append(f"{shape.strategy}: weights, gradients and optimizer state assumed fully sharded over "
                     f"{shape.devices} devices (ZeRO-3 style); the layer being gathered is not counted")
    if autocast_dtype is not None:
        notes.append(f"{shape.precision}: fp32 weights and moments, activations counted under "
                     f"{str(autocast_dtype).replace('torch.', '')} autocast")
    return MemoryPlan(terms, notes)


def _numel(shape: tuple) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _width(shapes: Mapping[str, tuple]) -> int:
    """n_embd: the embedding's width."""
    return int(shapes["emb.weight"][1])
