"""Checkpoint writing (atomic) and picking a checkpoint to resume from."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rwkv_plug.core.atomic import atomic_write
from rwkv_plug.core.errors import ModelError, TrainingError


class AtomicCheckpointIO(TorchCheckpointIO):
    """A Lightning CheckpointIO that writes to a temp file in the same dir, then renames.

    Lightning's own writer goes through an fsspec transaction; the rename
    here makes the guarantee explicit and independent of fsspec versions.
    A module-level class, so ``ddp_spawn`` can pickle it to its workers.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def atomic_checkpoint_io() -> AtomicCheckpointIO:
    """The CheckpointIO plugin every rwkv-plug Trainer gets."""
    return AtomicCheckpointIO()


def find_resume(resume: str | None, checkpoint_dir: Path, log=print) -> str | None:
    """``None`` -> fresh; ``auto`` -> newest ``*.ckpt`` in the dir (fresh if none); else a path."""
    if not resume:
        return None
    if resume == "auto":
        found = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        if not found:
            log(f"resume auto: no checkpoint in {checkpoint_dir}, starting fresh")
            return None
        log(f"resume auto: continuing from {found[-1]}")
        return str(found[-1])
    path = Path(resume)
    if path.is_dir():
        raise TrainingError(f"--resume {resume} is a folder; give a checkpoint file in it (e.g. {path / 'last.ckpt'}) "
                            f"or 'auto' to pick the newest in {checkpoint_dir}")
    if not path.is_file():
        raise TrainingError(f"--resume {resume}: no such checkpoint file (use 'auto' to pick the newest in {checkpoint_dir})")
    return str(path)


#: What every Lightning training checkpoint holds.
_CHECKPOINT_KEYS = ("pytorch-lightning_version", "state_dict")


def check_resume(path: str, model: torch.nn.Module, prefix: str = "model.") -> None:
    """Refuse a ``--resume`` file that is not a training checkpoint of ``model``, in one line.

    The file is read safely (``weights_only``, mmap) before Lightning reads it,
    so a model file, a foreign or malicious file, or a checkpoint of another
    model size is named as such instead of failing inside Lightning.
    """
    from rwkv_plug.models.export import checkpoint_safe_types
    from rwkv_plug.models.io import read_torch_file

    try:
        raw = read_torch_file(path, safe_types=checkpoint_safe_types())
    except ModelError as exc:
        raise TrainingError(f"--resume {path}: {exc}") from None
    if not isinstance(raw, Mapping) or not all(k in raw for k in _CHECKPOINT_KEYS):
        if isinstance(raw, Mapping) and raw and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
        ):
            raise TrainingError(
                f"--resume {path} is a model file, not a training checkpoint; use it as model.load_model "
                "(without --resume) to start from its weights"
            )
        raise TrainingError(
            f"--resume {path} is not a training checkpoint (it lacks {' and '.join(map(repr, _CHECKPOINT_KEYS))}); "
            "give a .ckpt written by rwkv-plug fit, or --resume auto"
        )
    saved = raw["state_dict"] if isinstance(raw["state_dict"], Mapping) else {}
    ours = {prefix + k: v for k, v in model.state_dict().items()}
    differences = []
    for key, here in ours.items():
        there = saved.get(key)
        if there is None:
            differences.append(f"{key} is missing there")
        elif tuple(there.shape) != tuple(here.shape):
            differences.append(f"{key} is {tuple(there.shape)} there and {tuple(here.shape)} here")
    differences += [f"{k} is there but not in this model" for k in saved if k.startswith(prefix) and k not in ours]
    if differences:
        more = f" (and {len(differences) - 1} more differences)" if len(differences) > 1 else ""
        raise TrainingError(
            f"checkpoint {path} was saved from a different model: {differences[0]}{more}; "
            "resume from a checkpoint of this model.load_model, or start without --resume"
        )
