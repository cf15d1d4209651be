"""A failed ddp_spawn rank is reported in one line, with its rank and the error's own class."""

from __future__ import annotations

import textwrap

import pytest
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from conftest import run_cli
from rwkv_plug.core.errors import DataError, TrainingError
from rwkv_plug.training.worker_errors import worker_failure


def raised(last_line: str, rank: int = 1) -> ProcessRaisedException:
    trace = (f"\n\n-- Process {rank} terminated with the following error:\nTraceback (most recent call last):\n"
             '  File "x.py", line 1, in f\n    g()\n' + last_line + "\n")
    return ProcessRaisedException(trace, rank, 4242)


def test_our_errors_keep_their_class_and_message_with_the_rank():
    err = worker_failure(raised("rwkv_plug.core.errors.DataError: data/a.jsonl:3: column 'text' is None", 1))
    assert type(err) is DataError and err.exit_code == 1
    assert str(err) == "rank 1: data/a.jsonl:3: column 'text' is None"


def test_other_exceptions_name_the_rank_and_the_exception():
    err = worker_failure(raised("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", 3))
    assert type(err) is TrainingError
    assert str(err) == ("training rank 3 failed with RuntimeError: CUDA out of memory. Tried to allocate "
                        "2.00 GiB (rerun with --debug for its traceback)")
    # a class of another package that happens to share a name with ours is not ours
    err = worker_failure(raised("other.errors.DataError: nope", 0))
    assert type(err) is TrainingError and "failed with DataError: nope" in str(err)
    assert "failed with AssertionError (rerun" in str(worker_failure(raised("AssertionError", 0)))


def test_a_killed_rank_says_how_it_ended():
    killed = ProcessExitedException("process 1 terminated with signal SIGKILL", 1, 4242, -9, "SIGKILL")
    assert str(worker_failure(killed)) == "training rank 1 was killed by SIGKILL (out of memory?)"
    exited = ProcessExitedException("process 0 terminated with exit code 3", 0, 4242, 3)
    assert str(worker_failure(exited)) == "training rank 0 exited with status 3"


def test_other_exceptions_of_the_main_process_are_left_alone():
    assert worker_failure(ValueError("x")) is None


@pytest.mark.slow
@pytest.mark.usefixtures("offline_data")
def test_fit_cli_reports_a_failing_ddp_spawn_rank_in_one_line(tmp_path):
    from fit_project import _setup, _tokenizer

    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    cfg = _setup(tmp_path, max_steps=2)
    cfg.write_text(cfg.read_text().replace("  enable_progress_bar: false\n", (
        "  enable_progress_bar: false\n  accelerator: cpu\n  devices: 2\n  strategy: ddp_spawn\n"
        "  callbacks: [{class_path: rank_fails.RankOneFails}]\n")))
    (tmp_path / "rank_fails.py").write_text(textwrap.dedent("""
        import lightning as L
        from rwkv_plug.core.errors import TrainingError

        class RankOneFails(L.Callback):
            def on_train_start(self, trainer, pl_module):
                if trainer.global_rank == 1:
                    raise TrainingError("the loss went NaN")
    """))
    res = run_cli("fit", str(cfg), cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 1
    assert res.stderr.rstrip().splitlines()[-1] == "error: rank 1: the loss went NaN", res.stderr[-3000:]
    assert "-- Process 1 terminated" not in res.stderr
