"""`rwkv-plug fit` refuses what it can before any heavy work, each time in one line.

Bad trainer values, an unknown kernel, a --resume file that is not a checkpoint of
this model, a tokenizer the model has no rows for: all are named with the key or
file and what to do, through the CLI's entry point (in this process: the `cli` fixture).
Also the default checkpoint retention, the `-c/--config` alias and, in a real `rwkv-plug`
process, the absence of library noise in a normal run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from fit_project import _error_lines, _project, _with


def test_bad_trainer_values_and_kernel_are_all_reported_at_config_load(tmp_path, cli):
    cfg = _with(_project(tmp_path), "trainer", "  precision: 13", "  max_epochs: ten", "  gradient_clip_val: x",
                "  checkpoint: {every_n_train_steps: abc}")
    _with(cfg, "model", "  kernel: torhc")
    res = cli("fit", str(cfg), cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    msg = lines[0]
    assert "5 problems" in msg
    assert "trainer.precision: 13 is not valid; use one of" in msg and "bf16-mixed" in msg
    assert "trainer.max_epochs must be an integer or null, got 'ten'" in msg
    assert "trainer.gradient_clip_val must be a number or null, got 'x'" in msg
    assert "trainer.checkpoint.every_n_train_steps must be an integer or null, got 'abc'" in msg
    assert "model.kernel: unknown kernel 'torhc'. Did you mean 'torch'? Available: auto, cuda, fla, torch, triton" in msg
    assert not (tmp_path / "datapath").exists()


def _refused_in_one_line(tmp_path, cli, lines: list[str], needle: str) -> None:
    """``fit`` with ``lines`` added to the trainer section fails with exit 2 and one line."""
    cfg = _with(_project(tmp_path), "trainer", *lines)
    res = cli("fit", str(cfg), cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = _error_lines(res)
    assert len(errors) == 1 and errors[0].startswith(f"error: {cfg}: {needle}"), res.stderr[-2000:]
    assert "looks like a bug" not in res.stderr


@pytest.mark.parametrize("lines, needle", [
    (["  accelerator: tpux"], "trainer.accelerator: 'tpux' is not valid (Lightning: You selected an invalid accelerator"),
    (["  checkpoint: {save_top_k: 3}"], "trainer.checkpoint.save_top_k: 3 is not valid (Lightning: ModelCheckpoint(save_top_k=3, monitor=None)"),
])
@pytest.mark.slow
def test_what_lightning_refuses_is_named_before_the_data_is_built(tmp_path, cli, lines, needle):
    _refused_in_one_line(tmp_path, cli, lines, needle)
    assert not (tmp_path / "datapath").exists()  # failed before the data step


def test_a_refusal_that_names_only_the_value_names_its_key():
    from rwkv_plug.training.lightning_args import refused

    values = {"accelerator": "gpu", "strategy": "auto", "devices": "auto"}
    err = refused(ValueError("No supported gpu backend found!"), "c.yaml", "trainer", values)
    assert str(err) == "c.yaml: trainer.accelerator: 'gpu' is not valid (Lightning: No supported gpu backend found!)"
    err = refused(ValueError("something auto went wrong"), "c.yaml", "trainer", values)  # too common to name a key
    assert str(err).startswith("c.yaml: trainer: Lightning refused these settings (something auto went wrong)")


@pytest.mark.parametrize("lines, needle", [
    # 24 training rows / microbatch 2 = 12 batches an epoch: known only once the data is built
    (["  val_check_interval: 1000"], "trainer.val_check_interval: 1000 is more than the 12 training batches "
     "(microbatches per device) of an epoch; set it to at most 12"),
    (["  limit_train_batches: 0.01"], "trainer.limit_train_batches: 0.01 of the 12 training batches per epoch "
     "is less than one batch; use at least 0.0833"),
    # refused by Lightning inside trainer.fit (the validation loader's setup)
    (["  limit_val_batches: 0.01"], "trainer.limit_val_batches: 0.01 is not valid (Lightning: You requested to check "
     "0.01 of the `val_dataloader`"),
])
@pytest.mark.slow
def test_what_lightning_refuses_against_the_data_is_one_line_naming_the_key(tmp_path, cli, lines, needle):
    _refused_in_one_line(tmp_path, cli, lines, needle)


def test_errors_inside_fit_that_lightning_did_not_raise_are_not_renamed():
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from rwkv_plug.training.lightning_args import fit_naming_refusals

    class Trainer:  # raises here, in a test file, as a bug in rwkv-plug's own code would
        def fit(self, error):
            raise error

    for error in (ValueError("val_check_interval is broken"), MisconfigurationException("max_steps")):
        with pytest.raises(type(error)) as info:
            fit_naming_refusals(Trainer(), "cfg.yaml", {"val_check_interval": 5, "max_steps": 3}, error)
        assert info.value is error


def test_a_tokenizer_with_more_ids_than_the_model_has_rows_is_refused(tmp_path, cli):
    cfg = _project(tmp_path, vocab=8)  # the data's tokenizer has 16 ids
    res = cli("fit", str(cfg), cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = _error_lines(res)
    assert len(errors) == 1, res.stderr[-2000:]
    assert "data.tokenizer 'tok' has 16 ids but model.load_model" in errors[0]
    assert "has vocab_size 8; use a model initialised with `rwkv-plug init-model --vocab_size 16`" in errors[0]
    assert not (tmp_path / "datapath").exists()  # refused before the data was built


def test_token_ids_past_the_model_are_refused_even_without_a_recorded_tokenizer(tmp_path):
    import datasets

    from rwkv_plug.core.errors import ConfigError
    from rwkv_plug.models.vocab import check_vocab

    rows = {"input_ids": [[1, 2, 3], [4, 20]], "loss_mask": [[1, 1, 1], [1, 1]]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)})
    with pytest.raises(ConfigError, match=r"holds token id 20 but model.load_model 'm.pth' has vocab_size 16"):
        check_vocab({"data_path": str(tmp_path / "none")}, dd, 16, "m.pth", log=print)
    check_vocab({"data_path": str(tmp_path / "none")}, dd, 21, "m.pth", log=print)


def test_the_largest_id_is_recorded_at_build_and_read_back_without_a_pass_over_the_data(tmp_path, monkeypatch):
    from rwkv_plug.core.errors import ConfigError
    from rwkv_plug.data.pipeline import prepare_dataset
    from rwkv_plug.models import vocab

    (tmp_path / "a.jsonl").write_text("".join(f'{{"text": "row {i} of some text"}}\n' for i in range(8)))
    cfg = {"source": str(tmp_path / "a.jsonl"), "data_path": str(tmp_path / "out"), "tokenizer": "world",
           "test_split": 2}
    dd, _ = prepare_dataset(cfg, log=lambda m: None)
    top = max(max(ids) for split in dd.values() for ids in split["input_ids"])
    assert vocab.dataset_record(tmp_path / "out") == ("world", 65536, top)

    def no_pass(_dataset):
        raise AssertionError("the ids were read again")

    monkeypatch.setattr(vocab, "max_token_id", no_pass)
    vocab.check_vocab(cfg, dd, 65536, "m.pth", log=print)
    # the recorded id still guards a model with fewer rows than the data needs
    monkeypatch.setattr(vocab, "dataset_record", lambda _p: (None, None, top))
    with pytest.raises(ConfigError, match=f"holds token id {top} but model.load_model 'm.pth' has vocab_size {top}"):
        vocab.check_vocab(cfg, dd, top, "m.pth", log=print)


@pytest.mark.slow
def test_an_unpadded_larger_model_vocab_warns_once_and_output_has_no_library_noise(tmp_path):
    cfg = _project(tmp_path, vocab=16 + 1024)
    res = run_cli("fit", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    warned = [l for l in res.stderr.splitlines() if l.startswith("warning: data.tokenizer")]
    assert warned == ["warning: data.tokenizer 'tok' has 16 ids but model.load_model 'model.pth' "
                      "has vocab_size 1040, so 1024 rows will never be trained; was the model made for another "
                      "tokenizer? (see docs/training.md, Vocabulary)"]
    assert "litlogger" not in res.stderr
    assert "LeafSpec" not in res.stderr
    assert "GPU available" not in res.stderr and "x devices 1 (cpu) x" in res.stdout + res.stderr


def _resume_files(tmp_path: Path) -> dict[str, Path]:
    from rwkv_plug.models.init import init_state_dict

    other = tmp_path / "other.ckpt"
    sd = {f"model.{k}": v for k, v in init_state_dict(2, 64, 128, seed=0).items()}
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": sd, "epoch": 0}, other)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    torch.save({"epoch": 3}, tmp_path / "dict.ckpt")
    return {"model": tmp_path / "model.pth", "other": other, "junk": tmp_path / "junk.ckpt",
            "dict": tmp_path / "dict.ckpt", "folder": tmp_path / "tok"}


@pytest.mark.parametrize("which, needle", [
    ("model", "is a model file, not a training checkpoint; use it as model.load_model"),
    ("other", "was saved from a different model: model.emb.weight is (128, 64) there and (64, 64) here"),
    ("junk", "it is not a PyTorch file (neither a zip archive nor a pickle)"),
    ("dict", "is not a training checkpoint (it lacks 'pytorch-lightning_version' and 'state_dict')"),
    ("folder", "is a folder; give a checkpoint file in it"),
])
@pytest.mark.slow
def test_a_wrong_resume_file_is_one_line_before_the_data_step(tmp_path, cli, which, needle):
    cfg = _project(tmp_path)
    res = cli("fit", str(cfg), "--resume", str(_resume_files(tmp_path)[which]), cwd=tmp_path)
    assert res.returncode == 1, res.stderr[-2000:]
    errors = _error_lines(res)
    assert len(errors) == 1 and needle in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "looks like a bug" not in res.stderr
    assert not (tmp_path / "datapath").exists()


def test_config_option_is_an_alias_of_the_argument(tmp_path, cli):
    cfg = _with(_project(tmp_path), "trainer", "  max_step: 3")
    for args in (["-c", str(cfg)], ["--config", str(cfg)]):
        res = cli("fit", *args, cwd=tmp_path)
        assert res.returncode == 2
        assert "unknown key trainer.max_step. Did you mean 'max_steps'?" in res.stderr, res.stderr
    both = cli("fit", str(cfg), "-c", str(cfg), cwd=tmp_path)
    assert both.returncode == 2 and "the config is given twice" in both.stderr
    neither = cli("fit", cwd=tmp_path)
    assert neither.returncode == 2 and "no config file given: rwkv-plug fit CONFIG (or -c CONFIG)" in neither.stderr


def test_a_missing_logger_package_is_one_line_naming_the_extra(tmp_path, cli, monkeypatch):
    cfg = _with(_project(tmp_path), "trainer", "  logger: tensorboard")
    for package in ("tensorboard", "tensorboardX"):
        monkeypatch.setitem(sys.modules, package, None)  # not installed, whatever this machine has
    res = cli("fit", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert lines == [f'error: {cfg}: trainer.logger: tensorboard needs the tensorboard package, which is not '
                     'installed; pip install "rwkv-plug[tensorboard]"'], res.stderr


@pytest.mark.slow
def test_default_checkpoints_keep_only_the_newest_and_last_and_a_padded_vocab_is_silent(tmp_path, offline_data):
    from rwkv_plug.training.fit import run_fit

    cfg = _project(tmp_path, vocab=16 + 1023, max_steps=18)  # 6 optimizer steps per epoch: 3 epoch ends
    out: list[str] = []
    run_fit(cfg, log=out.append)
    files = sorted(p.name for p in (tmp_path / "runs" / "cfg" / "checkpoints").iterdir())
    assert files == ["epoch=2-step=18.ckpt", "last.ckpt"]
    assert not [l for l in out if l.startswith("warning:")], out  # 1023 unused rows count as padding


def test_a_missing_source_file_fails_before_the_trainer_and_model_load(tmp_path, cli):
    cfg = _project(tmp_path)
    cfg.write_text(cfg.read_text().replace("source: data.txt", "source: dat.txt"))
    res = cli("fit", str(cfg), cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert lines == [f"error: {cfg}: data.source 'dat.txt' does not exist (looked in {tmp_path})"], lines
