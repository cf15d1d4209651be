"""Ctrl-C during ``fit``: finish the optimizer step in progress, save it, then stop.

The checkpoint is written where a step checkpoint is (``on_train_batch_end``
of the microbatch that completed the step), so it resumes exactly as those
do; never in the middle of an accumulation, whose partial gradient no
checkpoint holds. A second Ctrl-C stops at once without saving.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch


class SaveOnCtrlC(L.Callback):
    """Turns the first SIGINT of training into "save at the end of this step, then stop".

    Each training process installs the handler (the main thread only; the previous
    handler is back when training ends). Under several ranks the request is shared
    at each step end (an all-reduce MAX of one flag), so every rank saves the same
    step and stops together. A module-level class: ``ddp_spawn`` pickles callbacks.
    """

    def __init__(self) -> None:
        self.requested = False
        #: ``(path, step)`` of the checkpoint written on Ctrl-C, once written
        self.saved: tuple[str, int] | None = None
        self._previous: Any = None
        self._active = False  # the same on every rank: whether a step end may save
        self._installed = False
        self._step_at_start = 0
        self._speaks = True

    # -- the handler ---------------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        if self.requested:  # the second Ctrl-C: stop now, without a checkpoint
            self._uninstall()
            raise KeyboardInterrupt
        self.requested = True
        if self._speaks:
            print("\nCtrl-C: finishing this optimizer step to save a checkpoint, then stopping "
                  "(Ctrl-C again stops at once without saving)", file=sys.stderr, flush=True)

    def _uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_previous"], state["_installed"] = None, False  # a handler stays in its process
        return state

    # -- Lightning hooks -------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self.requested, self.saved = False, None
        self._speaks = trainer.is_global_zero
        self._active = trainer.checkpoint_callback is not None  # else nothing to save into: Ctrl-C stops at once
        if self._active and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step_at_start:  # inside an accumulation: no checkpoint here
            return
        if not self._active or not _any_rank(self.requested, trainer):
            return
        self._active = False
        self._uninstall()
        path = _ctrl_c_path(trainer.checkpoint_callback)
        # recorded before saving, so the checkpoint's callback state names it: the resumed run's
        # ModelCheckpoint then writes over it instead of adding last-v1.ckpt
        trainer.checkpoint_callback.last_model_path = path
        trainer.save_checkpoint(path, weights_only=False)  # every rank calls it; written atomically
        self.saved = (path, int(trainer.global_step))
        raise KeyboardInterrupt  # Lightning's own shutdown; fit reports the saved step

    def on_train_end(self, trainer, pl_module) -> None:
        self._uninstall()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._uninstall()


def _any_rank(flag: bool, trainer) -> bool:
    """Whether any rank asked to stop (one all-reduce per optimizer step under several ranks)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([int(flag)], device=trainer.strategy.root_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _ctrl_c_path(cb) -> str:
    """The checkpoint callback's ``last.ckpt`` (the one it manages, once it wrote one)."""
    if cb.last_model_path:
        return str(cb.last_model_path)
    return str(Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")
