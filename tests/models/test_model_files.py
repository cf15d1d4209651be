"""Model files: safe loading, atomic writes, init-model and export commands."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from rwkv_plug.core.errors import ModelError, OutputError
from rwkv_plug.models.arch import x052_shapes
from rwkv_plug.models.export import export_checkpoint
from rwkv_plug.models.init import init_state_dict
from rwkv_plug.models.io import load_state_dict, save_state_dict
from conftest import run_cli



def invoke(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI entry point in-process: (exit code, stdout, stderr)."""
    from rwkv_plug.core.cli import main

    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


class Evil:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    payload = {"emb.weight": torch.zeros(2, 2), "x": Evil(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ModelError) as err:
        load_state_dict(path)
    assert not marker.exists()
    assert "evil.pth" in str(err.value)
    if writer == "torch.save":
        assert "refused" in str(err.value) and "pickled code" in str(err.value)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="not a model state dict"):
        load_state_dict(tmp_path / "list.pth")
    torch.save({"state_dict": {"model.emb.weight": torch.zeros(1)}}, tmp_path / "t.ckpt")
    with pytest.raises(ModelError, match="rwkv-plug export"):
        load_state_dict(tmp_path / "t.ckpt")


def test_garbage_and_truncated_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelError, match="cannot read"):
        load_state_dict(tmp_path / "junk.pth")
    save_state_dict({"a": torch.ones(100)}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.pth"):
        load_state_dict(tmp_path / "cut.pth")


def test_a_file_in_no_torch_format_is_named_so_by_generate_export_and_fit(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(bytes(range(110, 200)) * 4)  # starts with "n": torch reported "Unsupported operand 110"
    cfg = tmp_path / "cfg.yaml"
    (tmp_path / "x.txt").write_text("some text\n")
    cfg.write_text(f"trainer: {{default_root_dir: {tmp_path}/runs}}\nmodel: {{load_model: {junk}, lr_init: 1e-3}}\n"
                   f"data: {{data_path: {tmp_path}/d, source: {tmp_path}/x.txt}}\n")
    for args in (["generate", junk, "--prompt", "hi"], ["export", junk, tmp_path / "out.pth"], ["fit", cfg]):
        code, _, err = invoke(capsys, *args)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code != 0 and len(errors) == 1, (args, err)
        assert f"cannot read '{junk}': it is not a PyTorch file (neither a zip archive nor a pickle)" in errors[0]
        assert "pickled code" not in errors[0]


@pytest.mark.slow
def test_an_old_format_malicious_pickle_is_refused_in_one_line_without_torch_warnings(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"emb.weight": torch.zeros(2, 2), "x": Evil(marker)}, protocol=4))
    res = run_cli("export", str(path), str(tmp_path / "out.pth"))
    assert res.returncode != 0 and not marker.exists()
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: refused to load '{path}'"), res.stderr
    assert "it is a raw pickle, not a file torch.save wrote" in lines[0]  # not torch's "Unsupported operand"
    assert "operand" not in lines[0]


def test_save_is_atomic_and_writes_only_the_tensor_data(tmp_path, monkeypatch):
    big = torch.arange(1000.0)
    save_state_dict({"a": big[:10]}, tmp_path / "sub" / "m.pth")  # parent folder is created
    loaded = load_state_dict(tmp_path / "sub" / "m.pth")
    assert torch.equal(loaded["a"], big[:10])
    assert (tmp_path / "sub" / "m.pth").stat().st_size < 2000  # not the whole 1000-float storage

    (tmp_path / "keep.pth").write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OutputError, match=r"^cannot write .*keep\.pth: disk full$"):
        save_state_dict({"a": big}, tmp_path / "keep.pth")
    assert (tmp_path / "keep.pth").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pth", "sub"]  # no temp left


def test_a_save_removes_temp_files_that_killed_writers_left_in_its_folder(tmp_path):
    import subprocess
    import sys

    from rwkv_plug.core import leftovers

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host, dead = leftovers._host(), proc.pid
    left = {  # name -> whether the next save removes it
        f".step=20.ckpt.{host}-{dead}-k2j_x.tmp": True,  # another output's, killed mid-write
        f".m.pth.{host}-{dead}-a1.tmp": True,
        f".m.pth.{host}-{os.getpid()}-a1.tmp": False,  # a live process's write in progress
        f".m.pth.elsewhere-{dead}-a1.tmp": False,  # another host's (shared file system)
        ".notes.tmp": False,  # not ours
    }
    for name in left:
        (tmp_path / name).write_bytes(b"partial")
    save_state_dict({"a": torch.ones(2)}, tmp_path / "m.pth")
    assert {p.name for p in tmp_path.iterdir()} == {"m.pth", *(n for n, gone in left.items() if not gone)}


def test_save_to_bare_file_name_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_state_dict({"a": torch.ones(2)}, "bare.pth")  # the earlier trainer failed here
    assert torch.equal(load_state_dict("bare.pth")["a"], torch.ones(2))


# -- init-model command ------------------------------------------------------
@pytest.mark.slow
def test_init_model_console_script(tmp_path):
    # the seed's music model has vocab 20259; L6-D512 layouts are checked in test_model.py
    out = tmp_path / "L2-D128-V20259-init.pth"
    res = run_cli("init-model", "--n_layer", "2", "--n_embd", "128", "--vocab_size", "20259",
                  "--skip-if-exists", str(out))
    assert res.returncode == 0, res.stderr
    assert "20259" in res.stdout and str(out) in res.stdout
    sd = load_state_dict(out)
    assert {k: tuple(v.shape) for k, v in sd.items()} == x052_shapes(2, 128, 20259)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())


@pytest.mark.parametrize("vocab,rows", [("neox", 50277), ("world", 65536), ("123", 123)])
def test_vocab_names(vocab, rows):
    from rwkv_plug.models.commands import parse_vocab

    assert parse_vocab(vocab) == rows


def test_init_model_skip_if_exists_leaves_file_untouched(tmp_path, capsys):
    out = tmp_path / "m.pth"
    out.write_bytes(b"precious")
    before = out.stat().st_mtime_ns
    code, stdout, _ = invoke(capsys, "init-model", "--n_layer", "1", "--n_embd", "64",
                             "--vocab_size", "10", "--skip-if-exists", out)
    assert code == 0
    assert "left untouched" in stdout
    assert out.read_bytes() == b"precious" and out.stat().st_mtime_ns == before


def test_init_model_skip_if_exists_says_when_the_kept_file_has_other_sizes(tmp_path, capsys):
    out = tmp_path / "m.pth"
    save_state_dict(init_state_dict(2, 64, 100, seed=0), out)
    code, _, err = invoke(capsys, "init-model", "--n_layer", "2", "--n_embd", "64", "--vocab_size", "100",
                          "--skip-if-exists", out)
    assert code == 0 and err == ""  # the same sizes: nothing to say
    code, _, err = invoke(capsys, "init-model", "--n_layer", "3", "--n_embd", "64", "--vocab_size", "world",
                          "--skip-if-exists", out)
    assert code == 0
    assert err.strip() == (f"warning: {out} has n_layer 2 (not 3), vocab_size 100 (not 65536); delete it, or "
                           "drop --skip-if-exists, to write the model asked for")


def test_init_model_creates_missing_folders_but_not_under_a_file(tmp_path, capsys):
    code, _, err = invoke(capsys, "init-model", "--n_layer", "1", "--n_embd", "64",
                          "--vocab_size", "10", tmp_path / "new" / "deeper" / "m.pth")
    assert code == 0, err
    assert (tmp_path / "new" / "deeper" / "m.pth").is_file()
    (tmp_path / "m.pth").write_bytes(b"precious")
    code, _, err = invoke(capsys, "init-model", "--n_layer", "1", "--n_embd", "64",
                          "--vocab_size", "10", tmp_path / "m.pth" / "out.pth")
    assert code == 1 and "Traceback" not in err and "bug" not in err, err
    assert err.strip() == f"error: cannot write {tmp_path / 'm.pth' / 'out.pth'}: {tmp_path / 'm.pth'} is not a folder"
    assert (tmp_path / "m.pth").read_bytes() == b"precious"


def test_export_to_an_unwritable_place_is_one_line(tmp_path, capsys):
    src = tmp_path / "m.pth"
    save_state_dict(init_state_dict(1, 64, 10, seed=0), src)
    code, _, err = invoke(capsys, "export", src, "/proc/out.pth")
    assert code == 1 and err.startswith("error: cannot write /proc/out.pth: ") and err.count("\n") == 1, err
    assert ".tmp" not in err and "bug" not in err


def test_init_model_without_directory_and_one_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(capsys, "init-model", "--n_layer", "1", "--n_embd", "64",
                          "--vocab_size", "10", "m.pth")
    assert code == 0, err
    assert set(load_state_dict(tmp_path / "m.pth")) == set(x052_shapes(1, 64, 10))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--n_layer", "2", "--n_embd", "100", "--vocab_size", "10"], "multiple of the head size 64"),
        (["--n_layer", "0", "--n_embd", "64", "--vocab_size", "10"], "n_layer must be at least 1"),
        (["--n_layer", "2", "--n_embd", "64", "--vocab_size", "wrld"], "neox, world"),
        (["--n_layer", "2", "--n_embd", "64", "--vocab_size", "0"], "at least 1"),
    ],
)
def test_init_model_errors_are_one_line(tmp_path, capsys, args, needle):
    code, _, err = invoke(capsys, "init-model", *args, tmp_path / "m.pth")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not (tmp_path / "m.pth").exists()


# -- export --------------------------------------------------------------------
def _lightning_like_checkpoint(path, prefix="model."):
    from lightning.fabric.utilities.data import AttributeDict

    sd = init_state_dict(2, 64, 50, seed=0, dtype=torch.float32)
    ckpt = {
        "epoch": 0,
        "global_step": 3,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {prefix + k: v for k, v in sd.items()} | {"loss_weights": torch.ones(3)},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}],
        "hyper_parameters": AttributeDict(lr_init=1e-3, ctx_len=512),
    }
    torch.save(ckpt, path)
    return sd


@pytest.mark.parametrize("prefix", ["model.", "_forward_module.model.", ""])
def test_export_strips_prefixes_and_casts(tmp_path, prefix):
    sd = _lightning_like_checkpoint(tmp_path / "last.ckpt", prefix)
    _, out, dims = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "m.pth")
    got = load_state_dict(out)
    assert set(got) == set(sd) and dims["n_layer"] == 2
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], sd[k].bfloat16()) for k in sd)
    _, out32, _ = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "m32.pth", "fp32")
    assert all(torch.equal(load_state_dict(out32)[k], sd[k]) for k in sd)


@pytest.mark.slow
def test_export_cli_from_folder_and_errors(tmp_path, capsys):
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    _lightning_like_checkpoint(ckdir / "epoch=0-step=3.ckpt")
    code, out, err = invoke(capsys, "export", ckdir, tmp_path / "out.pth", "--dtype", "fp32")
    assert code == 0, err
    assert "epoch=0-step=3.ckpt" in out
    assert load_state_dict(tmp_path / "out.pth")["head.weight"].dtype == torch.float32

    code, _, err = invoke(capsys, "export", ckdir, tmp_path / "x.pth", "--dtype", "fp8")
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "unknown dtype 'fp8'" in err and "bf16, fp32" in err

    bad = tmp_path / "partial.ckpt"
    sd = init_state_dict(2, 64, 50, seed=0)
    del sd["blocks.1.att.gate.weight"]
    torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}}, bad)
    res = run_cli("export", str(bad), str(tmp_path / "y.pth"))
    assert res.returncode != 0 and "missing: blocks.1.att.gate.weight" in res.stderr
    assert not (tmp_path / "y.pth").exists()


def test_export_real_lightning_checkpoint(tmp_path):
    import lightning as L

    from rwkv_plug.models import load_model

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"lr": 0.01})
            self.model = load_model(init_state_dict(1, 64, 20, seed=0))

        def training_step(self, batch, _):
            logits, _ = self.model(batch)
            return torch.nn.functional.cross_entropy(logits[0], batch[0])

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.01)

    data = torch.utils.data.DataLoader(torch.randint(0, 20, (4, 8)), batch_size=1)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    module = Module()
    trainer.fit(module, data)
    _, out, _ = export_checkpoint(tmp_path / "checkpoints", tmp_path / "m.pth", "fp32")
    got = load_state_dict(out)
    trained = module.model.state_dict()
    assert set(got) == set(trained)
    assert all(torch.equal(got[k], trained[k]) for k in got)


@pytest.mark.parametrize("scale", ["-1", "nan"])
def test_init_model_refuses_a_bad_embedding_scale_in_one_line(tmp_path, scale):
    res = run_cli("init-model", "--n_layer", "1", "--n_embd", "64", "--vocab_size", "100",
                  "--emb-scale", scale, str(tmp_path / "m.pth"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "looks like a bug" not in res.stderr
    assert "--emb-scale" in res.stderr and not (tmp_path / "m.pth").exists()
