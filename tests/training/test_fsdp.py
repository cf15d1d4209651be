"""Sharded training (trainer.strategy: fsdp2), the DeepSpeed and FSDP1 refusals, and a 2-"node"
launch through torchrun: 2 CPU ranks over gloo train the weights of one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from fit_project import _project, _with
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.training.config import load_fit_config, sharded_strategy_problem

HERE = Path(__file__).resolve().parent


# -- which strategy values run here (CPU) ------------------------------------------------------
@pytest.mark.parametrize("name", ["fsdp2", "FSDP2", "model_parallel"])
def test_fsdp2_names_pass_on_cpu(name):
    assert sharded_strategy_problem(name, "cpu") is None


@pytest.mark.parametrize("name", ["fsdp", "fsdp_cpu_offload"])
def test_fsdp1_on_cpu_says_to_use_fsdp2(name):
    text = sharded_strategy_problem(name, "cpu")
    assert f"trainer.strategy '{name}' is not supported" in text and "needs CUDA" in text
    assert "use 'fsdp2'" in text


@pytest.mark.parametrize("name", ["deepspeed", "deepspeed_stage_2_offload", "DeepSpeed_Stage_3"])
def test_deepspeed_without_cuda_is_refused(name):
    text = sharded_strategy_problem(name, "cpu")
    assert f"trainer.strategy '{name}' needs CUDA" in text and "'fsdp2'" in text


def test_deepspeed_stage_3_is_refused_even_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "ZeRO stage 3" in sharded_strategy_problem("deepspeed_stage_3_offload", "gpu")
    assert "ZeRO stage 3" in sharded_strategy_problem(
        {"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy", "init_args": {"stage": 3}}, "auto")
    assert sharded_strategy_problem("fsdp", "gpu") is None  # runs as fsdp2 on CUDA


def test_deepspeed_config_fails_in_one_line_before_any_data(tmp_path, cli):
    cfg = _project(tmp_path)
    res = cli("fit", str(cfg), "--trainer.strategy", "deepspeed_stage_2", "--trainer.accelerator", "cpu",
              cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "trainer.strategy 'deepspeed_stage_2' needs CUDA" in lines[0]
    assert not (tmp_path / "datapath").exists()  # refused before the dataset is built


def test_fsdp2_builds_lightnings_model_parallel_strategy_over_every_rank(tmp_path, monkeypatch):
    from lightning.pytorch.strategies import ModelParallelStrategy

    from rwkv_plug.training.fit import build_trainer

    monkeypatch.chdir(tmp_path)

    cfg = load_fit_config(_project(tmp_path), overrides={"trainer.strategy": "fsdp2", "trainer.accelerator": "cpu",
                                                         "trainer.devices": 1})
    trainer = build_trainer(cfg)
    assert isinstance(trainer.strategy, ModelParallelStrategy)
    assert trainer.strategy._data_parallel_size == 1 and trainer.strategy._tensor_parallel_size == 1
    with pytest.raises(ConfigError, match="'fsdp' is not supported"):
        load_fit_config(_project(tmp_path), overrides={"trainer.strategy": "fsdp",
                                                             "trainer.accelerator": "cpu"})


# -- the exact-BPTT Function with FSDP2 shards (no Lightning) ------------------------------------
MODES = ["exact", "truncated", "range"]


@pytest.fixture(scope="module")
def sharded_gradients(tmp_path_factory) -> Path:
    """One 2-rank run of fsdp_grad_driver.py for every mode: starting the ranks is most of its cost."""
    out = tmp_path_factory.mktemp("fsdp_grads")
    res = subprocess.run([sys.executable, str(HERE / "fsdp_grad_driver.py"), str(out), *MODES],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_bptt_gradient_of_sharded_parameters_is_the_mean_of_the_ranks_whole_gradients(sharded_gradients, mode):
    """2 ranks (gloo), FSDP2 on each block and the model, 3- and 2-chunk samples (different chunk
    counts per rank), fp64: the sharded gradients, gathered, equal the mean of the two samples'
    single-process gradients to 1e-12 relative (a sum instead of a mean is off by 100%, gradients
    of the last chunk only by far more than that)."""
    got = torch.load(sharded_gradients / mode / "grads.pt", weights_only=True)
    want = torch.load(sharded_gradients / mode / "expected.pt", weights_only=True)
    assert set(got) == set(want)
    for name, g in got.items():
        scale = want[name].abs().max().clamp(min=1e-30)
        assert float((g - want[name]).abs().max() / scale) < 1e-12, name


# -- fit: fsdp2 on 2 ranks, resumed; 2 nodes through torchrun ------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exported(tmp_path: Path, ckpt: Path) -> dict[str, torch.Tensor]:
    from rwkv_plug.models.export import export_checkpoint
    from rwkv_plug.models.io import load_state_dict

    _, out, dims = export_checkpoint(ckpt, tmp_path / f"{ckpt.parent.parent.name}-{ckpt.stem}.pth", "fp32")
    assert dims["arch"] and dims["n_layer"] == 2
    return load_state_dict(out)


def _close(a: dict, b: dict, atol: float = 2e-5) -> float:
    assert set(a) == set(b)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < atol, worst
    return worst


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The tiny project trained 4 steps in one process (microbatch 1, accumulate 2), every step saved."""
    from rwkv_plug.training.fit import run_fit

    root = tmp_path_factory.mktemp("fsdp_project")
    old = Path.cwd()
    os.chdir(root)
    try:
        cfg = _project(root, max_steps=4)
        cfg.write_text(cfg.read_text().replace("target_batch_size: 4\n  microbatch_size: 2",
                                               "target_batch_size: 2\n  microbatch_size: 1\n  accelerator: cpu"))
        _with(cfg, "trainer", "  checkpoint: {every_n_train_steps: 1, save_top_k: -1}")
        run_fit(cfg, log=lambda m: None)  # also builds the dataset the other runs reuse
    finally:
        os.chdir(old)
    ckpts = root / "runs" / "cfg" / "checkpoints"
    return root, cfg, {s: _exported(root, ckpts / f"epoch=0-step={s}.ckpt") for s in (2, 4)}


@pytest.mark.slow
def test_fsdp2_on_two_ranks_trains_resumes_and_exports_the_weights_of_one_process(one_process):
    """`fit` with trainer.strategy: fsdp2 on 2 CPU ranks (each 1 sample per step, 72-token samples in
    3 chunks of 32: exact BPTT across chunks), stopped at step 2 and resumed to step 4: each exported
    checkpoint equals one process's at that step (Adam steps of lr 1e-2 move weights by ~1e-2 per
    step; a lost optimizer state or a wrong gradient is orders of magnitude over the tolerance)."""
    root, cfg, single = one_process
    common = ["--trainer.strategy", "fsdp2", "--trainer.devices", "2", "--trainer.default_root_dir", "runs/fsdp2"]
    res = run_cli("fit", str(cfg), *common, "--trainer.max_steps", "2", cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpts = root / "runs" / "fsdp2" / "checkpoints"
    _close(_exported(root, ckpts / "epoch=0-step=2.ckpt"), single[2])
    res = run_cli("fit", str(cfg), *common, "--trainer.max_steps", "4", "--resume", "auto", cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resume auto: continuing from" in res.stdout + res.stderr
    start = {k: v.float() for k, v in torch.load(root / "model.pth", weights_only=True).items()}
    assert max(float((single[4][k] - start[k]).abs().max()) for k in start) > 1e-2  # it trained
    _close(_exported(root, ckpts / "epoch=0-step=4.ckpt"), single[4])


@pytest.mark.slow
def test_two_nodes_through_torchrun_train_the_weights_of_one_process(one_process):
    """Two `torchrun --nnodes 2 --node-rank 0|1` launches of `rwkv-plug fit` (1 process each, a
    local rendezvous, gloo) with trainer.num_nodes: 2 reach one process's step-4 weights."""
    root, cfg, single = one_process
    port = _free_port()
    exe = str(Path(sys.executable).with_name("rwkv-plug"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
         exe, "fit", str(cfg), "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp",
         "--trainer.default_root_dir", "runs/nodes"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert "x nodes 2 x accumulate 1 = 2 samples per optimizer step" in outs[0]
    _close(_exported(root, root / "runs" / "nodes" / "checkpoints" / "epoch=0-step=4.ckpt"), single[4])
