"""Checkpoint writing (atomic) and picking a checkpoint to resume from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rwkv_plug.core.atomic import atomic_write
from rwkv_plug.core.errors import TrainingError


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
    if not path.is_file():
        raise TrainingError(f"--resume {resume}: no such checkpoint file (use 'auto' to pick the newest in {checkpoint_dir})")
    return str(path)
