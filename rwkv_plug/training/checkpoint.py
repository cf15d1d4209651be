"""Checkpoint writing (atomic), picking a checkpoint to resume from, and its loop state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when inside it (Lightning makes a dirpath absolute)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class CheckpointFolder:
    """Where a ``ModelCheckpoint`` writes: ``base``, or the folders under it that match
    ``pattern`` (the logger's numbered version changes with every run)."""

    base: Path
    pattern: str = ""

    def __str__(self) -> str:
        return shown_path(self.base / self.pattern if self.pattern else self.base)

    def checkpoints(self) -> list[Path]:
        return list(self.base.glob(f"{self.pattern}/*.ckpt" if self.pattern else "*.ckpt"))


def checkpoint_folders(trainer, every_version: bool = False) -> list[CheckpointFolder]:
    """The folders of the trainer's ``ModelCheckpoint`` callbacks, wherever they were configured.

    A callback's ``dirpath``, else the folder Lightning gives it at fit time:
    ``<save_dir>/<name>/<version>/checkpoints`` of the first logger, or
    ``<default_root_dir>/checkpoints`` without one. With ``every_version``, a
    numbered logger version is a pattern matching those of earlier runs too.
    """
    out: list[CheckpointFolder] = []
    for cb in trainer.checkpoint_callbacks:
        if cb.dirpath is not None:
            folder = CheckpointFolder(Path(cb.dirpath))
        elif trainer.loggers:
            logger = trainer.loggers[0]
            base = Path(logger.save_dir if logger.save_dir is not None else trainer.default_root_dir, str(logger.name))
            version = logger.version  # a number: the next free one, fixed from here on
            if isinstance(version, str):
                folder = CheckpointFolder(base / version / "checkpoints")
            elif every_version or version is None:  # None: a run id the logger gets later
                folder = CheckpointFolder(base, f"{'*' if version is None else 'version_*'}/checkpoints")
            else:
                folder = CheckpointFolder(base / f"version_{version}" / "checkpoints")
        else:
            folder = CheckpointFolder(Path(trainer.default_root_dir) / "checkpoints")
        if folder not in out:
            out.append(folder)
    return out


def find_resume(resume: str | None, folders: Path | Sequence[Path | CheckpointFolder], log=print) -> str | None:
    """``None`` -> fresh; ``auto`` -> newest ``*.ckpt`` in the folders (fresh if none); else a path."""
    if not resume:
        return None
    places = [f if isinstance(f, CheckpointFolder) else CheckpointFolder(Path(f))
              for f in ([folders] if isinstance(folders, (str, Path)) else folders)]
    where = " or ".join(str(f) for f in places)
    if resume == "auto":
        found = sorted((p for f in places for p in f.checkpoints()), key=lambda p: (p.stat().st_mtime_ns, str(p)))
        if not found:
            log(f"resume auto: no checkpoint in {where}, starting fresh")
            return None
        log(f"resume auto: continuing from {shown_path(found[-1])}")
        return str(found[-1])
    path = Path(resume)
    if path.is_dir():
        raise TrainingError(f"--resume {resume} is a folder; give a checkpoint file in it (e.g. {path / 'last.ckpt'}) "
                            f"or 'auto' to pick the newest in {where}")
    if not path.is_file():
        raise TrainingError(f"--resume {resume}: no such checkpoint file (use 'auto' to pick the newest in {where})")
    return str(path)


def earlier_run(folders: Sequence[CheckpointFolder], resume_from: str | None) -> str | None:
    """Why this run would mix its checkpoints with an earlier run's, or ``None``.

    A fixed checkpoint folder (no logger version in its path) that already holds
    ``*.ckpt`` files belongs to an earlier run unless this run resumes from a file in
    it. Writing there would put Lightning's ``last-v1.ckpt`` ... beside that run's
    ``last.ckpt``, and an export or ``--resume auto`` could pick either run's file.
    """
    for folder in folders:
        if folder.pattern:  # one folder per logger version: a new run gets a new one
            continue
        found = folder.checkpoints()
        if not found:
            continue
        if resume_from is not None and Path(resume_from).resolve().parent == folder.base.resolve():
            continue
        newest = max(found, key=lambda p: p.stat().st_mtime_ns)
        return (f"{folder} already holds {len(found)} checkpoint(s) of an earlier run (newest: {newest.name}); "
                "a new run there would mix its checkpoints with them")
    return None


#: What every Lightning training checkpoint holds.
_CHECKPOINT_KEYS = ("pytorch-lightning_version", "state_dict")


def check_resume(path: str, model: torch.nn.Module, prefix: str = "model.",
                 batches: tuple[int, int] | None = None) -> int:
    """Refuse a ``--resume`` file that is not a training checkpoint of ``model``, in one line.

    The file is read safely (``weights_only``, mmap) before Lightning reads it,
    so a model file, a foreign or malicious file, or a checkpoint of another
    model size is named as such instead of failing inside Lightning. With
    ``batches`` (this run's microbatch size and rank count), a checkpoint that
    stopped inside an epoch with another batch layout is refused too: the
    data already trained in that epoch could not be skipped exactly. Returns the
    optimizer steps the checkpoint holds.
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
    from rwkv_plug.training.tuning import checkpoint_tensors

    ours = {prefix + k: v for k, v in checkpoint_tensors(model).items()}  # a tuned run saves its trainable part
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
    if batches is not None:
        _check_batch_layout(path, raw.get("rwkv_plug"), batches)
    step = raw.get("global_step")
    return int(step) if isinstance(step, int) else 0


def _check_batch_layout(path: str, pos: Any, batches: tuple[int, int]) -> None:
    if (not isinstance(pos, Mapping) or not pos.get("epoch_batches") or pos.get("epoch_complete")
            or "microbatch_size" not in pos):
        return  # at an epoch boundary any layout resumes exactly (older checkpoints: not recorded)
    saved = (int(pos["microbatch_size"]), int(pos.get("world_size", 1)))
    if saved != tuple(batches):
        raise TrainingError(
            f"checkpoint {path} stopped inside an epoch with microbatch_size {saved[0]} on {saved[1]} rank(s), "
            f"but this run has microbatch_size {batches[0]} on {batches[1]}; the rest of that epoch could not "
            "be found exactly. Resume with the same trainer.microbatch_size and devices, or from a checkpoint "
            "saved at an epoch end"
        )


def epoch_end_as_batch_end(checkpoint: dict[str, Any]) -> bool:
    """Rewrite Lightning's loop counters of a checkpoint saved in ``on_train_epoch_end``
    to those of one saved in ``on_train_batch_end`` of the same last batch; returns
    whether it did.

    A ``ModelCheckpoint`` without ``every_n_train_steps`` saves at the end of the
    epoch, and also when ``max_steps`` stops training in the middle of one. In
    such a file the epoch counts as processed even if it was cut short, and
    Lightning resumes it wrongly: with ``max_steps`` it goes on with the epoch's
    remaining batches drawn in the next epoch's order, with only ``max_epochs``
    it skips the rest of the epoch.
    A checkpoint saved after the last batch resumes exactly in every case:
    mid-epoch Lightning finishes the epoch, after its last batch it starts the
    next one. The two differ by one increment of each counter below (the epoch's
    ``processed``, the batch's ``completed``, the steps the loggers have seen)
    made between the batch end and the epoch end.
    """
    try:
        fit = checkpoint["loops"]["fit_loop"]
        epochs, batches = fit["epoch_progress"], fit["epoch_loop.batch_progress"]
        stepped = fit["epoch_loop.state_dict"]
        current = epochs["current"]
        at_epoch_end = current["processed"] == current["started"] and current["completed"] == current["processed"] - 1
        if not at_epoch_end or batches["current"]["ready"] == 0:
            return False
        for counts in (epochs["current"], epochs["total"]):
            counts["processed"] -= 1
        for counts in (batches["current"], batches["total"]):
            counts["completed"] -= 1
        stepped["_batches_that_stepped"] -= 1
    except (KeyError, TypeError):  # not a Lightning loop state we know: let Lightning restore it as it is
        return False
    return True


def mark_resumed_step_saved(trainer) -> str | None:
    """Tell every ``ModelCheckpoint`` that the step a run resumed at is saved already.

    Lightning's ModelCheckpoint does not keep the step it last saved across a resume
    (it restarts at 0). With ``every_n_train_steps`` and gradient accumulation, the
    first microbatch of a run resumed at step N is still at step N, in the middle of
    an accumulation, so it saved again over ``step=N`` and ``last.ckpt``: its data
    position moved on while the gradient it had accumulated was lost, and a resume
    from that file trained step N+1 on fewer microbatches. Returns a warning when a
    callback lacks the attribute (a Lightning that renamed it).
    """
    for cb in trainer.checkpoint_callbacks:
        if not hasattr(cb, "_last_global_step_saved"):
            return (f"resume: {type(cb).__name__} has no _last_global_step_saved (another Lightning version?); "
                    "a checkpoint may be written again at the resumed step, in the middle of an accumulation")
        cb._last_global_step_saved = max(int(cb._last_global_step_saved), int(trainer.global_step))
    return None


def newest_checkpoint(trainer) -> tuple[str, int] | None:
    """``(path, optimizer steps it holds)`` of the newest checkpoint this run wrote, if any."""
    from rwkv_plug.models.export import checkpoint_safe_types
    from rwkv_plug.models.io import read_torch_file

    cb = trainer.checkpoint_callback
    newest = (cb.last_model_path or cb.best_model_path) if cb is not None else ""
    if not newest or not Path(newest).is_file():
        return None
    try:
        return newest, int(read_torch_file(newest, safe_types=checkpoint_safe_types())["global_step"])
    except Exception:  # unreadable now: there is nothing to tell about it
        return None


def newest_in_folders(folders: Sequence[CheckpointFolder]) -> tuple[str, int] | None:
    """``(path, optimizer steps it holds)`` of the newest checkpoint file in ``folders``.

    Read from the files, not a callback's memory: under ``ddp_spawn`` the ranks that
    wrote them are other processes. A fresh run never writes into a folder holding
    another run's files (:func:`earlier_run`), so these are this run's or the one it resumed.
    """
    from rwkv_plug.models.export import checkpoint_safe_types
    from rwkv_plug.models.io import read_torch_file

    found = sorted((p for f in folders for p in f.checkpoints()), key=lambda p: (p.stat().st_mtime_ns, str(p)))
    if not found:
        return None
    try:
        step = read_torch_file(found[-1], safe_types=checkpoint_safe_types())["global_step"]
    except Exception:  # unreadable now: it still exists, its step is unknown
        step = -1
    return shown_path(found[-1]), int(step)


def unsaved_steps_note(trainer) -> str | None:
    """A note when the newest checkpoint holds fewer optimizer steps than the run trained
    (``every_n_train_steps`` that does not divide it, or steps after the last validation)."""
    found = newest_checkpoint(trainer)
    trained = int(trainer.global_step)
    if found is None or found[1] >= trained:
        return None
    newest, saved = found
    return (f"note: the newest checkpoint, {newest}, holds step {saved} of the {trained} trained; the last "
            f"{trained - saved} are not saved (checkpoints are written every trainer.checkpoint.every_n_train_steps "
            "steps, else at epoch ends; see docs/config.md)")
