"""Sharded strategies are refused at config validation; ddp and others pass through."""

from __future__ import annotations

import textwrap

import pytest

from conftest import run_cli
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.training.config import load_fit_config, sharded_strategy_problem


def _config(tmp_path, strategy: str):
    # an empty model file and a missing data source: loading either would fail with another error
    (tmp_path / "model.pth").write_bytes(b"")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(textwrap.dedent(f"""
        trainer: {{strategy: {strategy}, max_steps: 1}}
        model: {{load_model: model.pth, lr_init: 1e-3}}
        data: {{data_path: {tmp_path}/d, source: missing.txt}}
    """))
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["deepspeed_stage_2_offload", "fsdp"])
def test_fit_cli_refuses_a_strategy_this_machine_cannot_run_in_one_line(tmp_path, strategy):
    # no CUDA here: DeepSpeed needs it, FSDP1 needs it and cannot run the BPTT engine (fsdp2 can)
    res = run_cli("fit", str(_config(tmp_path, strategy)), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert f"trainer.strategy '{strategy}'" in lines[0] and "needs CUDA" in lines[0]
    assert "'fsdp2'" in lines[0] and "docs/training.md" in lines[0]
    assert not (tmp_path / "d").exists()  # refused before any data work


@pytest.mark.parametrize("strategy", ["FSDP_cpu_offload", "deepspeed", "DeepSpeed_Stage_3"])
def test_sharded_names_are_caught_in_any_case(tmp_path, strategy):
    with pytest.raises(ConfigError, match=f"trainer.strategy '{strategy}' "):
        load_fit_config(_config(tmp_path, strategy))


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "auto", "ddp_find_unused_parameters_true"])
def test_unsharded_strategy_names_pass(tmp_path, strategy):
    assert load_fit_config(_config(tmp_path, strategy)).trainer.strategy == strategy


def test_strategy_objects_and_class_paths():
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    assert sharded_strategy_problem(DDPStrategy()) is None
    assert sharded_strategy_problem({"class_path": "lightning.pytorch.strategies.DDPStrategy"}) is None
    assert "'FSDPStrategy' is not supported" in sharded_strategy_problem(FSDPStrategy())
    # a subclass is still DeepSpeed (constructing a DeepSpeedStrategy needs deepspeed installed)
    sub = type("MyDeepSpeed", (DeepSpeedStrategy,), {"__init__": lambda self: None})()
    assert "'MyDeepSpeed' needs CUDA" in sharded_strategy_problem(sub, "cpu")
    spec = {"class_path": "lightning.pytorch.strategies.FSDPStrategy", "init_args": {}}
    assert "is not supported" in sharded_strategy_problem(spec)


def test_build_trainer_refuses_an_fsdp1_strategy_object(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy

    from rwkv_plug.training.fit import build_trainer

    cfg = load_fit_config(_config(tmp_path, "ddp"))
    cfg.trainer = cfg.trainer.replace(strategy=FSDPStrategy())  # the section is frozen: a changed copy
    with pytest.raises(ConfigError, match="FSDPStrategy' is not supported"):
        build_trainer(cfg)
