"""Sharded training: which ``trainer.strategy`` values run, FSDP2 through Lightning, and the
parameters the exact-BPTT Function needs under it.

``trainer.strategy: fsdp2`` (or ``model_parallel``) becomes Lightning's
``ModelParallelStrategy`` with every rank in one data-parallel group (no tensor
parallelism); :meth:`RwkvTrainingModule.configure_model` then applies torch's
``fully_shard`` (FSDP2) to each block and to the whole model. ``fsdp`` (Lightning's
FSDP1) cannot run the chunked BPTT engine (its flat parameters hide the ones the
engine differentiates), so on CUDA it runs as ``fsdp2`` and on CPU, where Lightning
refuses FSDP1 anyway, it is a config error. DeepSpeed needs CUDA and keeps whole
parameters only up to ZeRO stage 2.

Under FSDP2 the parameters outside a forward pass are DTensor shards. The exact-BPTT
autograd Function (``training/bptt.py``) takes those shards as inputs, gathers the
whole parameters once for its backward (:func:`gathered_parameters`), differentiates
them, and hands back each gradient averaged over the ranks and cut to the rank's
shard (:func:`as_input_layout`, a reduce-scatter), as FSDP2 does for the other
chunks' gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

#: ``trainer.strategy`` names that mean FSDP2 (checked case-insensitively)
FSDP2_NAMES = ("fsdp2", "model_parallel")
#: Lightning's FSDP1 names: run as FSDP2 on CUDA
FSDP1_NAMES = ("fsdp",)
_SEE = "see docs/training.md, Sharded training"


def _cuda(accelerator: Any) -> bool:
    """Whether this run will have CUDA devices (``accelerator`` as written in the config)."""
    accel = str(accelerator if accelerator is not None else "auto").lower()
    if accel not in ("auto", "gpu", "cuda"):
        return False
    import torch

    return torch.cuda.is_available()


def strategy_name(strategy: Any) -> str | None:
    """The name a strategy value goes by: the string, a ``class_path``'s class, an object's class."""
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, dict):
        return str(strategy.get("class_path", "")).rpartition(".")[2]
    if strategy is None:
        return None
    return type(strategy).__name__


def is_fsdp2(strategy: Any, accelerator: Any = "auto") -> bool:
    """Whether ``strategy`` runs as FSDP2 here (``fsdp2``, ``model_parallel``, or ``fsdp`` on CUDA)."""
    if not isinstance(strategy, str):
        return False
    name = strategy.lower()
    return name in FSDP2_NAMES or (name in FSDP1_NAMES and _cuda(accelerator))


def strategy_problem(strategy: Any, accelerator: Any = "auto") -> str | None:
    """Why ``trainer.strategy`` cannot run here, in one line, or ``None``.

    Names, ``class_path`` mappings and Strategy objects are all checked: FSDP1 on
    CPU, any FSDP1 object, DeepSpeed without CUDA or at ZeRO stage 3, and a
    DeepSpeed that is not installed.
    """
    name = strategy_name(strategy)
    if not name:
        return None
    low = name.lower()
    shown = f"trainer.strategy '{name}'"
    if isinstance(strategy, str) and low in FSDP2_NAMES:
        return None
    if "modelparallel" in low and not isinstance(strategy, str):
        return None  # Lightning's ModelParallelStrategy, built by the user: configure_model shards for it
    if "fsdp" in low:
        if isinstance(strategy, str) and low in FSDP1_NAMES and _cuda(accelerator):
            return None  # runs as fsdp2
        where = "" if isinstance(strategy, str) and _cuda(accelerator) else " and needs CUDA"
        return (f"{shown} is not supported: Lightning's FSDP1 hides the parameters that rwkv-plug's chunked "
                f"BPTT engine differentiates{where}; use 'fsdp2' (FSDP2, runs on CPU and CUDA; {_SEE})")
    if "deepspeed" in low:
        return _deepspeed_problem(strategy, low, shown, accelerator)
    return None


def _deepspeed_problem(strategy: Any, low: str, shown: str, accelerator: Any) -> str | None:
    if not _cuda(accelerator):
        return (f"{shown} needs CUDA (Lightning's DeepSpeed strategies run on GPUs only) and this run has "
                f"none; use 'fsdp2' to shard on CPU, or 'ddp' ({_SEE})")
    stage = _deepspeed_stage(strategy, low)
    if stage is not None and stage >= 3:
        return (f"{shown} is not supported: ZeRO stage 3 partitions the parameters that rwkv-plug's chunked BPTT "
                f"engine differentiates; use 'fsdp2' to shard parameters, or deepspeed_stage_2 ({_SEE})")
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return f"{shown} needs the deepspeed package, which is not installed; pip install deepspeed ({_SEE})"
    return None


def _deepspeed_stage(strategy: Any, low: str) -> int | None:
    if isinstance(strategy, str):
        digits = low.removeprefix("deepspeed_stage_")[:1]
        return int(digits) if digits.isdigit() else None
    if isinstance(strategy, dict):
        stage = (strategy.get("init_args") or {}).get("stage")
        return int(stage) if isinstance(stage, int) else None
    config = getattr(strategy, "config", None) or {}
    stage = config.get("zero_optimization", {}).get("stage") if isinstance(config, dict) else None
    return int(stage) if isinstance(stage, int) else None


def fsdp2_strategy(world_size: int):
    """Lightning's ModelParallelStrategy for FSDP2 over every rank: full checkpoints in one file.

    One file (the full state gathered on rank 0) keeps every checkpoint tool working
    as under DDP: ``--resume`` checks, ``export``, ``report``.
    """
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1,
                                 save_distributed_checkpoint=False)


def shard_model(model, mesh) -> None:
    """``fully_shard`` each block (one all-gather per block in a forward pass), then the rest."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):  # configure_model runs again (e.g. fit after validate)
        return
    for block in getattr(model, "blocks", None) or []:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _dtensor_type():
    import torch

    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(params: Sequence[Any]) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in params)


@contextlib.contextmanager
def gathered_parameters(model, params: Sequence[Any]) -> Iterator[None]:
    """While inside, ``model.parameters()`` are whole (FSDP2: all-gathered), as the BPTT engine
    needs them; nothing happens for a model whose ``params`` are not shards."""
    if not is_sharded(params):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
    try:
        yield
    finally:
        for m in sharded:
            m.reshard()


def as_input_layout(grads: Sequence[Any], params: Sequence[Any]) -> list[Any]:
    """Each whole gradient in its parameter's layout: for a DTensor shard, the mean over the
    ranks of the mesh, cut to this rank's shard (a reduce-scatter; FSDP2 averages the same way)."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return list(grads)
    from torch.distributed.tensor import Partial

    out = []
    for g, p in zip(grads, params):
        if isinstance(p, dtensor) and g is not None and not isinstance(g, dtensor):
            mesh = p.device_mesh
            # a sum over ranks of g / size: gloo has no average reduction
            g = dtensor.from_local(g / mesh.size(), mesh, [Partial()] * mesh.ndim).redistribute(mesh, p.placements)
        out.append(g)
    return out
