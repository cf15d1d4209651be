"""The training progress bar counts optimizer steps over the whole run."""

from __future__ import annotations

import math

from rwkv_plug.training.progress import run_total_steps, step_progress_bar


def test_total_is_max_steps_when_set():
    assert run_total_steps(40, -1, 51, accumulate=2) == 40


def test_total_from_epochs_counts_optimizer_steps():
    # 51 microbatches per epoch with accumulation 2 -> 25 optimizer steps per epoch
    assert run_total_steps(-1, 3, 51, accumulate=2) == 75


def test_total_unknown_for_unbounded_runs():
    assert run_total_steps(-1, -1, 51, accumulate=1) is None
    assert run_total_steps(-1, 2, math.inf, accumulate=1) is None


class FakeTrainer:
    """The trainer attributes the bar reads."""

    def __init__(self, max_steps: int, accumulate: int, metrics: dict) -> None:
        self.max_steps, self.max_epochs, self.num_training_batches = max_steps, -1, 8
        self.accumulate_grad_batches = accumulate
        self.is_global_zero, self.sanity_checking = True, False
        self.loggers, self.global_step = [], 0
        self.progress_bar_metrics = self.callback_metrics = metrics


def started_bar(trainer: FakeTrainer):
    bar = step_progress_bar()
    bar._trainer = trainer  # what Lightning's setup would set
    bar.on_train_start(trainer, None)
    return bar


def test_bar_follows_global_step_and_shows_short_metric_names():
    trainer = FakeTrainer(10, 2, {"train/loss": 2.5, "train/lr": 0.001})
    bar = started_bar(trainer)
    assert bar._bar.total == 10
    for step in (0, 1, 1, 2):  # microbatches: the step advances every second one
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, None, None, 0)
    assert bar._bar.n == 2
    assert "loss" in bar._bar.postfix and "train/" not in bar._bar.postfix
    bar.on_train_end(trainer, None)
    assert bar._bar is None


def test_bar_closes_at_the_last_step_and_validation_after_it_is_still_shown(capsys):
    trainer = FakeTrainer(2, 1, {"train/loss": 2.5, "validation/loss": 2.25})
    bar = started_bar(trainer)
    trainer.global_step = 1
    bar.on_train_batch_end(trainer, None, None, None, 0)
    bar.on_validation_end(trainer, None)
    assert bar._bar is not None
    trainer.global_step = 2
    bar.on_train_batch_end(trainer, None, None, None, 1)
    assert bar._bar is None  # closed, so Lightning's "stopped" line starts a line of its own
    bar.on_validation_end(trainer, None)  # the final validation runs after the last step
    bar.on_train_end(trainer, None)
    err = capsys.readouterr().err  # with the bar, on stderr
    assert "step 1: validation/loss 2.2500" in err and "step 2: validation/loss 2.2500" in err


def test_the_bar_pickles_without_its_terminal_handle():
    import pickle

    bar = started_bar(FakeTrainer(2, 1, {}))
    bar._trainer = None
    clone = pickle.loads(pickle.dumps(bar))  # ddp_spawn sends the callbacks to its workers
    assert clone._bar is None and bar._bar is not None
