"""A progress bar counted in optimizer steps over the whole run.

Lightning's default bars count microbatches per epoch, which reads oddly for
RWKV training: with gradient accumulation and ``max_steps`` they show e.g.
"80/40" and "Epoch 0/-2". This bar shows steps done out of the run's total,
with the loss, learning rate and tokens/s from the progress-bar metrics, and
moves inside a step: each microbatch of a step with gradient accumulation adds
its share (``2.5/10 steps``), so a long step shows it is alive and the ETA
(the time left for the whole run) is known from the first microbatches.
Only the first process (rank 0) draws it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from tqdm.auto import tqdm


def run_total_steps(max_steps: int, max_epochs: int | None, batches_per_epoch: float, accumulate: int) -> int | None:
    """Optimizer steps the run will take, or ``None`` when unbounded or unknown.

    An epoch's last microbatches step the optimizer even when they are fewer than
    ``accumulate`` (Lightning steps at the end of every epoch), so an epoch has
    ``ceil(batches / accumulate)`` steps; the run stops at whichever limit comes first.
    """
    by_steps = max_steps if max_steps is not None and max_steps > 0 else None
    by_epochs = None
    if max_epochs is not None and max_epochs > 0 and math.isfinite(batches_per_epoch) and batches_per_epoch > 0:
        by_epochs = max_epochs * -(-int(batches_per_epoch) // max(1, accumulate))
    limits = [n for n in (by_steps, by_epochs) if n is not None]
    return min(limits) if limits else None


#: ``2.5/10 steps``: fractions of a step as its microbatches pass
_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} steps [{elapsed}<{remaining}{postfix}]"
_FORMAT_UNBOUNDED = "{desc}: {n:.1f} steps [{elapsed}, {rate_fmt}{postfix}]"


#: Shorter names for the bar's metrics.
_SHORT = {"train/tokens_per_sec": "tokens/s"}


def step_progress_bar():
    """The run's step progress bar (a Lightning callback)."""
    return StepProgressBar()


class StepProgressBar(ProgressBar):
    """Steps done out of the run's total, with the loss, LR and tokens/s.

    A module-level class: ``ddp_spawn`` pickles the trainer's callbacks into its workers.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar: Any = None
        self._step = 0  # the global step the microbatches below belong to
        self._micro = 0  # microbatches of that step done

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.is_enabled:
            return
        total = run_total_steps(
            trainer.max_steps, trainer.max_epochs, trainer.num_training_batches,
            trainer.accumulate_grad_batches,
        )
        self._step, self._micro = trainer.global_step, 0
        self._bar = tqdm(total=total, initial=trainer.global_step, desc="training", unit="step",
                         dynamic_ncols=True, bar_format=_FORMAT if total is not None else _FORMAT_UNBOUNDED)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._bar is None:
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = {_SHORT.get(k, k.removeprefix("train/")): v for k, v in metrics.items() if k != "v_num"}
        accumulate = max(1, int(trainer.accumulate_grad_batches))
        if trainer.global_step != self._step:  # this microbatch finished a step
            self._step, self._micro = trainer.global_step, 0
        else:
            self._micro += 1
        if accumulate > 1:
            shown["microbatch"] = f"{self._micro}/{accumulate}" if self._micro else f"{accumulate}/{accumulate}"
        # the step in progress counts its share, short of a whole step (an epoch's last one may be shorter)
        done = trainer.global_step + min(self._micro / accumulate, 0.99)
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(done - self._bar.n)
        if self._bar.total is not None and trainer.global_step >= self._bar.total:
            # the last step: close now, before Lightning says why it stopped
            self._bar.close()
            self._bar = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.is_enabled and not trainer.sanity_checking and "validation/loss" in trainer.progress_bar_metrics:
            # tqdm.write keeps an open bar below the line (after the last step it is closed)
            tqdm.write(f"step {trainer.global_step}: validation/loss "
                       f"{float(trainer.progress_bar_metrics['validation/loss']):.4f}", file=sys.stderr)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_bar"] = None  # an open bar (a terminal handle) stays in this process
        return state
