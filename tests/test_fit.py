"""End to end: `rwkv-plug fit` on a tiny CPU model; loss falls; resume auto; config errors."""

from __future__ import annotations

import csv
import random
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli


WORDS = "the cat sat on a mat and dog ran to park with red ball".split()


def _tokenizer(folder: Path) -> int:
    """A tiny word-level HF tokenizer (keeps the model small and the test fast)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>").save_pretrained(folder)
    return len(vocab)


def _setup(tmp_path: Path, max_steps: int) -> Path:
    random.seed(0)
    words = WORDS
    lines = [" ".join(random.choice(words) for _ in range(12)) for _ in range(160)]
    (tmp_path / "data.txt").write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(textwrap.dedent(f"""
        trainer:
          max_steps: {max_steps}
          target_batch_size: 4
          microbatch_size: 2
          enable_progress_bar: false
          enable_model_summary: false
        model:
          load_model: model.pth
          ctx_len: 32
          lr_init: 1e-2
          warmup_steps: 2
        data:
          data_path: datapath/
          source: data.txt
          tokenizer: tok
          text_rechunk_size: 72
          test_split: 2
    """))
    return cfg


def _losses(root: Path) -> list[float]:
    rows = []
    for f in sorted(root.glob("logs/version_*/metrics.csv")):
        with f.open() as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in rows]


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


def test_ctrl_c_during_training_says_where_the_checkpoints_are(tmp_path, monkeypatch):
    """Lightning answers a KeyboardInterrupt with its own shutdown and sys.exit(1);
    fit turns that into one message with the checkpoint folder and how to continue."""
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
    assert "training interrupted at step 2" in msg and "--resume auto" in msg
    assert "runs/cfg/checkpoints (none written yet)" in msg


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
