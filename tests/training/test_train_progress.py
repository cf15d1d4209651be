"""The training progress bar counts optimizer steps over the whole run."""

from __future__ import annotations

import math

import pytest

from rwkv_plug.training.progress import run_total_steps, step_progress_bar


def test_total_is_max_steps_when_set():
    assert run_total_steps(40, -1, 51, accumulate=2) == 40


def test_total_from_epochs_counts_optimizer_steps():
    # 51 microbatches per epoch with accumulation 2 -> 26 optimizer steps per epoch: Lightning
    # steps on the epoch's last microbatch too (the total was one short per epoch before)
    assert run_total_steps(-1, 3, 51, accumulate=2) == 78
    assert run_total_steps(-1, 3, 50, accumulate=2) == 75


def test_total_is_the_first_limit_reached():
    assert run_total_steps(40, 3, 51, accumulate=2) == 40
    assert run_total_steps(100, 3, 51, accumulate=2) == 78


def test_total_unknown_for_unbounded_runs():
    assert run_total_steps(-1, -1, 51, accumulate=1) is None
    assert run_total_steps(-1, 2, math.inf, accumulate=1) is None


class FakeTrainer:
    """The trainer attributes the bar reads."""

    def __init__(self, max_steps: int, accumulate: int, metrics: dict, rank: int = 0) -> None:
        self.max_steps, self.max_epochs, self.num_training_batches = max_steps, -1, 8
        self.accumulate_grad_batches = accumulate
        self.is_global_zero, self.sanity_checking = rank == 0, False
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


def test_the_bar_moves_with_each_microbatch_of_a_step():
    trainer = FakeTrainer(3, 4, {"train/loss": 2.5, "train/tokens_per_sec": 1234.0})
    bar = started_bar(trainer)
    seen = []
    for step in (0, 0, 0, 1, 1, 1, 1, 2):  # accumulation 4: every fourth microbatch steps
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, None, None, 0)
        seen.append((round(bar._bar.n, 4), bar._bar.postfix.split("microbatch=")[1]))
    assert seen == [(0.25, "1/4"), (0.5, "2/4"), (0.75, "3/4"), (1, "4/4"),
                    (1.25, "1/4"), (1.5, "2/4"), (1.75, "3/4"), (2, "4/4")]
    assert "tokens/s=1.23e+03" in bar._bar.postfix or "tokens/s=1234" in bar._bar.postfix
    line = str(bar._bar)
    assert "2.0/3 steps" in line and "<" in line  # steps done of the run, then the time left
    bar.on_train_end(trainer, None)


def test_only_rank_zero_draws_a_bar():
    trainer = FakeTrainer(3, 1, {}, rank=1)
    bar = started_bar(trainer)
    assert bar._bar is None
    trainer.global_step = 1
    bar.on_train_batch_end(trainer, None, None, None, 0)  # nothing to draw on, no error
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


@pytest.mark.slow
@pytest.mark.parametrize("limits, steps", [
    ("max_steps: 3", 3),
    # 24 samples / microbatch 2 = 12 microbatches, 5 of them per epoch, accumulation 2: 3 steps, the last of one
    ("max_epochs: 1\n  limit_train_batches: 5", 3),
    ("max_epochs: 2\n  limit_train_batches: 5", 6),
])
@pytest.mark.slow
def test_a_real_run_ends_its_bar_at_the_steps_it_ran(tmp_path, monkeypatch, capfd, limits, steps):
    import csv
    import re

    from fit_project import _setup, _tokenizer

    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    monkeypatch.chdir(tmp_path)
    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(1, 64, 64, seed=0), tmp_path / "model.pth")
    cfg = _setup(tmp_path, max_steps=1)
    cfg.write_text(cfg.read_text().replace("max_steps: 1", limits).replace("enable_progress_bar: false",
                                                                             "enable_progress_bar: true"))
    run_fit(cfg, log=lambda _m: None)
    err = capfd.readouterr().err
    shown = re.findall(r"(\d+\.\d)/(\d+) steps", err)
    assert shown, err[-2000:]
    assert shown[-1] == (f"{steps}.0", str(steps))  # the bar's total is the steps run, and it got there
    # (tqdm redraws at most every 0.1 s, so which fractions were drawn depends on timing: the
    # per-microbatch movement is checked with the fake trainer above)
    with open(tmp_path / "runs" / "cfg" / "logs" / "version_0" / "metrics.csv") as fh:
        trained = [r for r in csv.DictReader(fh) if r["train/loss"]]
    assert len(trained) == steps
