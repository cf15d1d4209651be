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


def test_bar_follows_global_step_and_shows_short_metric_names():
    class FakeTrainer:
        max_steps, max_epochs, num_training_batches, accumulate_grad_batches = 10, -1, 8, 2
        is_global_zero = True
        loggers = []
        global_step = 0
        progress_bar_metrics = {"train/loss": 2.5, "train/lr": 0.001}
        callback_metrics = progress_bar_metrics

    bar = step_progress_bar()
    trainer = FakeTrainer()
    bar._trainer = trainer  # what Lightning's setup would set
    bar.on_train_start(trainer, None)
    assert bar._bar.total == 10
    for step in (0, 1, 1, 2):  # microbatches: the step advances every second one
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, None, None, 0)
    assert bar._bar.n == 2
    assert "loss" in bar._bar.postfix and "train/" not in bar._bar.postfix
    bar.on_train_end(trainer, None)
    assert bar._bar is None


def test_bar_closes_at_the_last_step_and_validation_after_it_is_still_shown(capsys):
    class FakeTrainer:
        max_steps, max_epochs, num_training_batches, accumulate_grad_batches = 2, -1, 8, 1
        is_global_zero, sanity_checking = True, False
        loggers = []
        global_step = 0
        progress_bar_metrics = {"train/loss": 2.5, "validation/loss": 2.25}
        callback_metrics = progress_bar_metrics

    bar = step_progress_bar()
    trainer = FakeTrainer()
    bar._trainer = trainer
    bar.on_train_start(trainer, None)
    trainer.global_step = 1
    bar.on_train_batch_end(trainer, None, None, None, 0)
    bar.on_validation_end(trainer, None)
    assert bar._bar is not None
    trainer.global_step = 2
    bar.on_train_batch_end(trainer, None, None, None, 1)
    assert bar._bar is None  # closed, so Lightning's "stopped" line starts a line of its own
    bar.on_validation_end(trainer, None)  # the final validation runs after the last step
    bar.on_train_end(trainer, None)
    err = capsys.readouterr()
    shown = err.out + err.err
    assert "step 1: validation/loss 2.2500" in shown and "step 2: validation/loss 2.2500" in shown
