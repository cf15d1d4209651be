"""End to end: `rwkv-plug fit` on a tiny CPU model; loss falls; resume auto; config errors."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli
from fit_project import _losses, _setup, _tokenizer

pytestmark = pytest.mark.slow  # every test here runs fit in a subprocess or in-process




def test_fit_loss_goes_down_then_resume_auto_continues(tmp_path, monkeypatch):
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vocab = _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64 if vocab <= 64 else vocab, seed=0), tmp_path / "model.pth")
    cfg = _setup(tmp_path, max_steps=6)
    out: list[str] = []
    run_fit(cfg, log=out.append)
    text = "\n".join(out)
    assert "building the dataset at" in text
    assert "accumulate 2 = 4 samples per optimizer step" in text
    # rechunked rows all have 72 tokens
    assert ("padding: 0.0% of the token positions in the training batches of an epoch (microbatch_size 2; "
            "each batch is padded to its longest sample)") in out
    assert "model: " in text and "RWKV5 L2-D64, vocab 64, " in text and "M parameters" in text
    kept = list((tmp_path / "runs" / "cfg" / "logs").glob("version_*/config.yaml"))
    assert len(kept) == 1 and kept[0].read_text() == cfg.read_text()  # the run's config, as written
    ckpts = tmp_path / "runs" / "cfg" / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    losses = _losses(tmp_path / "runs" / "cfg")
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.5, losses

    # longer run, resumed: data reused, continues from step 6
    cfg.write_text(cfg.read_text().replace("max_steps: 6", "max_steps: 8"))
    out.clear()
    run_fit(cfg, resume="auto", log=out.append)
    text = "\n".join(out)
    assert "reusing the dataset at" in text and "building the dataset" not in text
    assert "resume auto: continuing from" in text
    assert len(_losses(tmp_path / "runs" / "cfg")) == 8


def test_fit_cli_config_error_is_one_line_with_did_you_mean(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("trainer: {max_step: 3}\nmodel: {load_model: model.pth, lr_init: 1e-3}\n"
                   f"data: {{data_path: {tmp_path}/d, source: x.txt}}\n")
    res = run_cli("fit", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "unknown key trainer.max_step. Did you mean 'max_steps'?" in lines[0]


def test_fit_cli_with_ddp_spawn_trains_validates_and_prints_the_log_folder_it_wrote(tmp_path):
    """The CLI path spawns workers: everything it hands them must pickle, and the log
    folder it prints afterwards must be the one the workers wrote to."""
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict

    vocab = _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    cfg = _setup(tmp_path, max_steps=2)
    cfg.write_text(cfg.read_text().replace(
        "  enable_progress_bar: false\n",  # the bar on: ddp_spawn pickles it into the workers
        "  enable_progress_bar: true\n  accelerator: cpu\n  devices: 2\n  strategy: ddp_spawn\n  val_check_interval: 2\n"))
    assert vocab <= 64
    res = run_cli("fit", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    # no library noise from the main process or the spawned workers; 48 unused rows are padding
    assert "LeafSpec" not in res.stderr and "litlogger" not in res.stderr, res.stderr[-2000:]
    assert "warning:" not in res.stderr, res.stderr[-2000:]
    assert "training: 100%" in res.stderr and "step 2: validation/loss" in res.stderr, res.stderr[-2000:]
    logs = [line.split("logs: ", 1)[1] for line in res.stderr.splitlines() if line.startswith("logs: ")]
    assert len(logs) == 1, res.stderr[-2000:]
    with (tmp_path / logs[0] / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sum(1 for r in rows if r.get("train/loss")) == 2
    assert any(r.get("validation/loss") for r in rows)


def test_an_immediate_stop_before_any_checkpoint_does_not_suggest_resuming(tmp_path, monkeypatch):
    """Lightning answers a KeyboardInterrupt with its own shutdown and sys.exit(1); fit turns
    that into one message. Raised directly (as a second Ctrl-C does), nothing was saved, so
    there is nothing to resume."""
    import signal

    from rwkv_plug.core.errors import Interrupted
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "ctrl_c.py").write_text(textwrap.dedent("""
        import lightning as L

        class CtrlCAtStep2(L.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == 2:
                    raise KeyboardInterrupt
    """))
    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    cfg = _setup(tmp_path, max_steps=6)
    cfg.write_text(cfg.read_text().replace(
        "  enable_progress_bar: false\n",
        "  enable_progress_bar: false\n  callbacks: [{class_path: ctrl_c.CtrlCAtStep2}]\n"))
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted) as exc:
            run_fit(cfg, log=lambda _msg: None)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl-C while it shuts down
    assert exc.value.exit_code == 130
    msg = str(exc.value)
    assert "training interrupted at step 2 before any checkpoint was written; nothing is saved" in msg
    assert "--resume" not in msg
    assert not list((tmp_path / "runs" / "cfg" / "checkpoints").glob("*.ckpt"))


SIGINT_AT = """
import os, signal
import lightning as L

class CtrlCAtBatch(L.Callback):
    # a terminal's Ctrl-C: SIGINT to the whole process group, as the given microbatch ends
    def __init__(self, batch):
        self.batch, self.seen = batch, 0

    def on_train_batch_end(self, trainer, *args):
        self.seen += 1
        if self.seen == self.batch:
            os.killpg(os.getpgid(0), signal.SIGINT)
"""


def _fit_stopped_by_ctrl_c(folder: Path, config: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``rwkv-plug fit CONFIG`` in its own process group (the SIGINT reaches it and its ranks, not
    pytest), with ``folder`` on PYTHONPATH for the callback that sends it: (exit code, stderr)."""
    import os
    import signal
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("rwkv-plug")
    proc = subprocess.Popen([str(exe), "fit", config], cwd=folder, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(folder), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err


def test_ctrl_c_before_the_first_checkpoint_saves_the_step_and_resumes_exactly(tmp_path, offline_data):
    """A real SIGINT in the middle of an accumulation (microbatch 5 = the first half of step 3,
    long before the first epoch-end checkpoint): fit finishes step 3, saves it atomically as
    last.ckpt, exits 130 naming it, and --resume auto then ends exactly as an uninterrupted run."""
    import torch

    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    text = _setup(tmp_path, max_steps=5).read_text().replace("  warmup_steps: 2\n", "  warmup_steps: 2\n  dropout: 0.1\n")
    (tmp_path / "full.yaml").write_text(text)
    (tmp_path / "stop.py").write_text(SIGINT_AT)
    (tmp_path / "cut.yaml").write_text(text.replace(
        "  enable_progress_bar: false\n",
        "  enable_progress_bar: false\n  callbacks: [{class_path: stop.CtrlCAtBatch, init_args: {batch: 5}}]\n"))
    code, err = _fit_stopped_by_ctrl_c(tmp_path, "cut.yaml", {"OMP_NUM_THREADS": "1"})  # one thread, as here
    assert code == 130, err[-3000:]
    assert "Ctrl-C: finishing this optimizer step to save a checkpoint" in err, err[-3000:]
    assert err.rstrip().splitlines()[-1] == ("training interrupted: step 3 saved to runs/cut/checkpoints/last.ckpt; "
                                             "continue with `rwkv-plug fit cut.yaml --resume auto`"), err[-3000:]
    folder = tmp_path / "runs" / "cut" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no temp file left
    saved = torch.load(folder / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and saved["rwkv_plug"]["epoch_batches"] == 6  # a step boundary

    (tmp_path / "cut.yaml").write_text(text)
    out: list[str] = []
    run_fit(tmp_path / "cut.yaml", resume="auto", log=out.append)
    assert "resume auto: continuing from runs/cut/checkpoints/last.ckpt" in out, out
    run_fit(tmp_path / "full.yaml", log=lambda m: None)
    a, b = (torch.load(tmp_path / "runs" / n / "checkpoints" / "last.ckpt", weights_only=True) for n in ("full", "cut"))
    assert a["global_step"] == b["global_step"] == 5
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=5.ckpt", "last.ckpt"]  # two files
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


@pytest.mark.slow
@pytest.mark.parametrize("strategy, last_line", [
    ("ddp", "training interrupted: step 3 saved to runs/cfg/checkpoints/last.ckpt; "),
    # the launching process of ddp_spawn waits for its ranks, then reads what they saved
    ("ddp_spawn", "training interrupted; the newest checkpoint, runs/cfg/checkpoints/last.ckpt, holds step 3; "),
])
def test_ctrl_c_under_two_ranks_saves_the_same_step_on_both(tmp_path, offline_data, strategy, last_line):
    import torch

    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    (tmp_path / "stop.py").write_text(SIGINT_AT.replace("if self.seen == self.batch:",
                                                        "if self.seen == self.batch and trainer.is_global_zero:"))
    cfg = _setup(tmp_path, max_steps=6)  # 2 ranks x microbatch 2: one microbatch per step
    cfg.write_text(cfg.read_text().replace("  enable_progress_bar: false\n", (
        "  enable_progress_bar: false\n  accelerator: cpu\n  devices: 2\n"
        f"  strategy: {strategy}\n  callbacks: [{{class_path: stop.CtrlCAtBatch, init_args: {{batch: 3}}}}]\n")))
    code, err = _fit_stopped_by_ctrl_c(tmp_path, "cfg.yaml")
    assert code == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("training interrupted")]
    assert lines == [last_line + "continue with `rwkv-plug fit cfg.yaml --resume auto`"], err[-3000:]  # rank 0 only
    saved = torch.load(tmp_path / "runs" / "cfg" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and saved["rwkv_plug"]["epoch_batches"] == 3
    assert len(saved["rwkv_plug"]["rng"]) == 2  # both ranks took part in the save


def test_fit_cli_with_ddp_runs_each_rank_once_and_only_rank_zero_speaks(tmp_path):
    """`ddp` re-runs the command line for rank 1: it must find rank 0's dataset and stay quiet."""
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    cfg = _setup(tmp_path, max_steps=2)
    cfg.write_text(cfg.read_text().replace(
        "  enable_progress_bar: false\n", "  enable_progress_bar: false\n  accelerator: cpu\n  devices: 2\n  strategy: ddp\n"))
    res = run_cli("fit", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert out.count("samples per optimizer step") == 1 and out.count("the dataset at") == 1, out[-2000:]
    assert out.count("checkpoints: ") == 1
    assert len(_losses(tmp_path / "runs" / "cfg")) == 2


def test_a_fresh_run_into_a_used_checkpoint_folder_is_refused_and_export_takes_the_newest(tmp_path, offline_data):
    """Never two runs in one checkpoint folder: a second fresh run is refused before any work
    (naming --resume auto), a resumed one keeps the folder at two files, and `export FOLDER`
    exports the newest state, also from a folder that older versions filled with two runs."""
    import os
    import shutil

    import torch

    from rwkv_plug.core.errors import TrainingError
    from rwkv_plug.models.export import export_checkpoint
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import load_state_dict, save_state_dict
    from rwkv_plug.training.fit import run_fit

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    cfg = _setup(tmp_path, max_steps=2).relative_to(tmp_path)  # as typed in tmp_path, the working folder
    run_fit(cfg, log=lambda m: None)
    folder = tmp_path / "runs" / "cfg" / "checkpoints"
    first = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert sorted(first) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    logs = sorted((tmp_path / "runs" / "cfg" / "logs").iterdir())

    with pytest.raises(TrainingError) as exc:
        run_fit(cfg, log=lambda m: None)
    assert str(exc.value) == (
        "runs/cfg/checkpoints already holds 2 checkpoint(s) of an earlier run (newest: last.ckpt); a new run there "
        "would mix its checkpoints with them; continue that run with `rwkv-plug fit cfg.yaml --resume auto`, or "
        "start a new one in another folder (trainer.default_root_dir or trainer.checkpoint.dirpath)")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == first  # untouched
    assert sorted((tmp_path / "runs" / "cfg" / "logs").iterdir()) == logs  # no log version either

    step2 = torch.load(folder / "last.ckpt", weights_only=True)
    cfg.write_text(cfg.read_text().replace("max_steps: 2", "max_steps: 4"))
    run_fit(cfg, resume="auto", log=lambda m: None)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]  # still two files
    step4 = torch.load(folder / "last.ckpt", weights_only=True)
    assert step4["global_step"] == 4

    def exported(source) -> dict:
        src, out, _ = export_checkpoint(source, tmp_path / "out.pth", "fp32")
        return src, load_state_dict(out)

    def model_of(ckpt) -> dict:
        return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}

    for source in (folder, tmp_path / "runs" / "cfg"):  # the checkpoint folder, or the whole run folder
        _, got = exported(source)
        want = model_of(step4)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in got)

    # a folder an earlier version left with two runs: the first run's last.ckpt is older than last-v1.ckpt
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    torch.save(step4, mixed / "last-v1.ckpt")
    torch.save(step2, mixed / "last.ckpt")
    os.utime(mixed / "last.ckpt", ns=(10**18, 10**18))
    os.utime(mixed / "last-v1.ckpt", ns=(2 * 10**18, 2 * 10**18))
    shutil.copy(folder / "epoch=0-step=4.ckpt", mixed / "epoch=0-step=2.ckpt")
    os.utime(mixed / "epoch=0-step=2.ckpt", ns=(10**18, 10**18))
    src, got = exported(mixed)
    assert src.name == "last-v1.ckpt"
    assert all(torch.equal(got[k], model_of(step4)[k]) for k in got)
