"""fit config: seed shape, did-you-mean, accumulation, all problems at once."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from data_helpers import seed_config
from fit_project import small_config
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.training.config import count_devices, load_fit_config


def _write(tmp_path: Path, body: str, model_file: bool = True) -> Path:
    if model_file:
        (tmp_path / "m.pth").write_bytes(b"x")
    p = tmp_path / "cfg.yaml"
    p.write_text(textwrap.dedent(body))
    return p


def test_seed_config_loads_as_written(tmp_path):
    seed = seed_config("example-hf-enwiki.yaml", load_model="m.pth", data_path=f"{tmp_path}/datapath/")
    cfg = load_fit_config(_write(tmp_path, seed))
    assert cfg.model["lr_init"] == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string
    assert cfg.model["lr_final"] == pytest.approx(3e-4)  # -1 means lr_init
    assert cfg.model["ctx_len"] == 1024
    assert cfg.model["bptt_truncated_learning"] is False  # exact gradients by default
    assert cfg.model["load_model"] == str(tmp_path / "m.pth")  # found next to the config
    assert cfg.trainer.max_steps == 10
    assert cfg.accumulate_grad_batches == 32 // (1 * cfg.num_devices * 1)
    assert cfg.checkpoint_dir == Path("runs/cfg/checkpoints")


@pytest.mark.parametrize(
    "devices,nodes,micro,target,expect",
    [(8, 1, 1, 32, 4), (3, 1, 2, 32, 5), (1, 1, 1, 32, 32), (4, 2, 8, 32, 1), (2, 1, 3, 1, 1)],
)
def test_accumulation_formula(tmp_path, devices, nodes, micro, target, expect):
    cfg = load_fit_config(small_config(tmp_path, trainer=f"accelerator: cpu, devices: {devices}, num_nodes: {nodes}, "
                                                         f"microbatch_size: {micro}, target_batch_size: {target}"))
    assert cfg.accumulate_grad_batches == expect == max(1, target // (nodes * devices * micro))
    assert cfg.trainer.accumulate_grad_batches == expect


def test_target_and_explicit_accumulate_conflict(tmp_path):
    with pytest.raises(ConfigError, match="target_batch_size and trainer.accumulate_grad_batches"):
        load_fit_config(small_config(tmp_path, trainer="target_batch_size: 8, accumulate_grad_batches: 2"))


@pytest.mark.parametrize("class_path", ["ModelCheckpoint", "lightning.pytorch.callbacks.ModelCheckpoint"])
def test_checkpoint_section_and_a_callbacks_model_checkpoint_conflict(tmp_path, class_path):
    callbacks = f"callbacks: [{{class_path: {class_path}, init_args: {{dirpath: ck}}}}]"
    with pytest.raises(ConfigError, match="trainer.checkpoint and a ModelCheckpoint in trainer.callbacks"):
        load_fit_config(small_config(tmp_path, trainer=f"checkpoint: {{every_n_train_steps: 5}}, {callbacks}"))
    alone = load_fit_config(small_config(tmp_path, trainer=callbacks))
    assert alone.trainer.callbacks[0]["class_path"] == class_path


def test_did_you_mean_and_all_problems_at_once(tmp_path):
    body = f"""
    trainer: {{max_step: 10, microbatch_size: 1}}
    model: {{load_model: m.pth, lr_init: 1e-4, ctx_lenn: 512, token_loss_threshold: 0.5, lr_type: cos}}
    dta: {{}}
    data: {{data_path: {tmp_path}/d, source: x.txt}}
    """
    with pytest.raises(ConfigError) as err:
        load_fit_config(_write(tmp_path, body))
    msg = str(err.value)
    assert "unknown key trainer.max_step. Did you mean 'max_steps'?" in msg
    assert "unknown key model.ctx_lenn. Did you mean 'ctx_len'?" in msg
    assert "unknown section 'dta'. Did you mean 'data'?" in msg
    assert "model.token_loss_threshold is not supported yet" in msg
    assert "model.lr_type must be 'cosine' or 'linear'" in msg
    assert "5 problems" in msg


def test_missing_model_file_and_lr(tmp_path):
    body = f"""
    model: {{load_model: nope.pth}}
    data: {{data_path: {tmp_path}/d, source: x.txt}}
    """
    with pytest.raises(ConfigError) as err:
        load_fit_config(_write(tmp_path, body, model_file=False))
    assert "nope.pth' does not exist" in str(err.value)
    assert "rwkv-plug init-model" in str(err.value)
    assert "model.lr_init is required" in str(err.value)


def test_noop_reference_keys_are_accepted_and_warmup_period_conflict(tmp_path):
    model = "lr_init: 1e-4, position_loss_bias: 1.0, token_dropout_rate: 0.0, warmup_steps: 10, lr_period: 5"
    with pytest.raises(ConfigError) as err:
        load_fit_config(small_config(tmp_path, model))
    assert str(err.value).count("problems") == 0  # exactly one problem
    assert "warmup_steps and model.lr_period cannot both be set" in str(err.value)


def test_head_size_64_is_accepted_and_other_values_are_refused_as_fixed(tmp_path):
    assert "head_size" not in load_fit_config(small_config(tmp_path, "lr_init: 1e-4, head_size: 64")).model
    with pytest.raises(ConfigError) as err:
        load_fit_config(small_config(tmp_path, "lr_init: 1e-4, head_size: 32"))
    msg = str(err.value)
    assert msg.endswith("model.head_size: RWKV-v5 has a head size of 64 (n_embd / 64 heads); set 64 or remove the key")
    assert "yet" not in msg


@pytest.mark.parametrize("value", ["highest", "high", "medium", "null"])
def test_matmul_precision_accepts_torchs_values_and_null(tmp_path, value):
    cfg = small_config(tmp_path, f"lr_init: 1e-4, torch_set_float32_matmul_precision: {value}")
    expected = None if value == "null" else value
    assert load_fit_config(cfg).model["torch_set_float32_matmul_precision"] == expected


@pytest.mark.parametrize("value, hint", [("hihg", " Did you mean 'high'?"), ("foo", ""), ("1", "")])
def test_matmul_precision_refuses_other_values_at_config_load(tmp_path, value, hint):
    with pytest.raises(ConfigError) as err:
        load_fit_config(small_config(tmp_path, f"lr_init: 1e-4, torch_set_float32_matmul_precision: {value}"))
    shown = repr(1 if value == "1" else value)
    assert str(err.value).endswith(f"model.torch_set_float32_matmul_precision must be highest, high, medium or null "
                                   f"(leave torch's setting), got {shown}.{hint}")


def test_checkpoint_and_logger_specs_are_checked(tmp_path):
    body = f"""
    trainer:
      logger: tensorbord
      callbacks: [{{class_path: lightning.pytorch.callbacks.LearningRateMonitor, args: {{}}}}]
      checkpoint: {{every_n_train_step: 5}}
    model: {{load_model: m.pth, lr_init: 1e-4}}
    data: {{data_path: {tmp_path}/d, source: x.txt}}
    """
    with pytest.raises(ConfigError) as err:
        load_fit_config(_write(tmp_path, body))
    msg = str(err.value)
    assert "Did you mean 'tensorboard'?" in msg
    assert "unexpected keys ['args'] next to class_path" in msg
    assert "trainer.checkpoint.every_n_train_step. Did you mean 'every_n_train_steps'?" in msg


def test_count_devices():
    assert count_devices("auto", accelerator="cpu") == 1
    assert count_devices([0, 1, 2]) == 3
    assert count_devices("4") == 4
    assert count_devices("0,1") == 2 and count_devices("0,") == 1  # Lightning's id lists
    with pytest.raises(ConfigError):
        count_devices("many")
    with pytest.raises(ConfigError, match="trainer.devices is an empty list"):
        count_devices([])


@pytest.mark.parametrize("bad, message", [
    ("microbatch_size: 0", "trainer.microbatch_size must be >= 1, got 0"),
    ("num_nodes: 0", "trainer.num_nodes must be >= 1, got 0"),
    ("devices: []", "trainer.devices is an empty list"),
])
def test_batch_sizes_that_cannot_divide_are_refused_with_target_batch_size(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_fit_config(small_config(tmp_path, trainer=f"accelerator: cpu, target_batch_size: 8, {bad}"))


def test_declared_model_sizes_must_match_the_checkpoint(tmp_path):
    from rwkv_plug.core.errors import ConfigError
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import load_training_model
    from rwkv_plug.training.options import MODEL_OPTIONS

    path = save_state_dict(init_state_dict(2, 64, 100), tmp_path / "m.pth")
    m = {o.name: o.default for o in MODEL_OPTIONS} | {"load_model": str(path), "lr_init": 1e-3}
    model = load_training_model(m | {"n_layer": 2, "n_embd": -1})
    assert (model.n_layer, model.n_embd, model.vocab_size) == (2, 64, 100)
    with pytest.raises(ConfigError, match=r"model.n_embd: 128 given but .*m.pth has 64"):
        load_training_model(m | {"n_embd": 128})


@pytest.mark.parametrize("name", ["csv", "tensorboard", "wandb"])
def test_named_loggers_build_or_say_in_one_line_what_to_install(name, tmp_path, monkeypatch):
    """Lightning's own message for a missing package is three lines with two other pip commands."""
    from rwkv_plug.core.errors import ConfigError
    from rwkv_plug.training.fit import _loggers

    if name == "csv":
        (logger,) = _loggers(name, tmp_path)
        assert type(logger).__name__ == "CSVLogger"
        return
    for package in ("tensorboard", "tensorboardX", "wandb"):
        monkeypatch.setitem(sys.modules, package, None)  # not installed, whatever this machine has
    with pytest.raises(ConfigError) as err:
        _loggers(name, tmp_path)
    assert str(err.value) == (f"trainer.logger: {name} needs the {name} package, which is not installed; "
                              f'pip install "rwkv-plug[{name}]"')


def test_simple_trainer_values_are_type_checked_and_numeric_strings_converted(tmp_path):
    trainer = ('gradient_clip_val: 1e-3, max_epochs: "4", precision: bf16-mixed, deterministic: warn, '
               "accumulate_grad_batches: 0, checkpoint: {every_n_train_steps: 1e2, save_last: maybe}")
    with pytest.raises(ConfigError) as err:
        load_fit_config(small_config(tmp_path, trainer=trainer))
    msg = str(err.value)
    assert "2 problems" in msg
    assert "trainer.accumulate_grad_batches must be >= 1, got 0" in msg
    assert "trainer.checkpoint.save_last must be true or false or one of link or null, got 'maybe'" in msg
    cfg = load_fit_config(small_config(tmp_path, trainer=trainer.replace("accumulate_grad_batches: 0",
                                                                         "accumulate_grad_batches: 1")
                                       .replace("save_last: maybe", "save_last: link")))
    assert cfg.trainer.lightning_options["gradient_clip_val"] == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string
    assert cfg.trainer.max_epochs == 4 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.checkpoint["every_n_train_steps"] == 100 and cfg.checkpoint["save_last"] == "link"
    assert cfg.checkpoint["save_top_k"] == 1  # the default: the newest checkpoint (plus last.ckpt)


@pytest.mark.parametrize("extra, message", [
    ("bptt_learning_range: 2", "model.bptt_learning_range applies only with bptt_learning: true"),
    ("bptt_truncated_learning: true", "model.bptt_truncated_learning applies only with bptt_learning: true"),
])
def test_bptt_options_without_bptt_learning_are_refused_not_ignored(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_fit_config(small_config(tmp_path, f"lr_init: 1e-4, bptt_learning: false, {extra}"))
    assert load_fit_config(small_config(tmp_path, "lr_init: 1e-4, bptt_learning: false")).model["bptt_learning"] is False


def test_a_section_that_is_not_a_mapping_is_one_problem(tmp_path):
    body = f"model: {{load_model: m.pth, lr_init: 1e-4}}\ndata: [{tmp_path}/d, x.txt]\n"
    with pytest.raises(ConfigError) as info:
        load_fit_config(_write(tmp_path, body))
    assert str(info.value).endswith("cfg.yaml: section 'data' must be a mapping of keys, got list")


def test_lr_final_takes_minus_one_or_a_rate_and_is_said_unused_with_warmup(tmp_path, capsys):
    def load(extra):
        return load_fit_config(small_config(tmp_path, f"lr_init: 1e-3, {extra}"))

    assert load("lr_final: -1").model["lr_final"] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"model.lr_final must be >= 0, or -1 for lr_init .*got -0.5"):
        load("lr_final: -0.5")
    capsys.readouterr()
    load("lr_final: 1e-4, warmup_steps: 10")
    assert "warning: model.lr_final (0.0001) is not used: with warmup_steps" in capsys.readouterr().err
    load("warmup_steps: 10")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("value", ["auto", "fp32", "tf32"])
def test_wkv_precision_accepts_its_values(tmp_path, value):
    assert load_fit_config(small_config(tmp_path, f"lr_init: 1e-4, wkv_precision: {value}")).model["wkv_precision"] == value


@pytest.mark.parametrize("value, hint", [("fp23", " Did you mean 'fp32'?"), ("bf16", ""), ("null", "")])
def test_wkv_precision_refuses_other_values_at_config_load(tmp_path, value, hint):
    with pytest.raises(ConfigError) as err:
        load_fit_config(small_config(tmp_path, f"lr_init: 1e-4, wkv_precision: {value}"))
    shown = repr(None if value == "null" else value)
    assert str(err.value).endswith(f"model.wkv_precision must be auto, fp32, tf32, got {shown}.{hint}")


def test_a_bad_wkv_precision_is_one_error_line_from_fit(tmp_path, cli):
    res = cli("fit", str(small_config(tmp_path, "lr_init: 1e-4, wkv_precision: tf23")), cwd=tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "model.wkv_precision must be auto, fp32, tf32, got 'tf23'. Did you mean 'tf32'?" in lines[0]
