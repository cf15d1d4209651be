"""`rwkv-plug plan`: data and step counts, and the peak-memory estimate against measured peaks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rwkv_plug.core import plugins
from rwkv_plug.training.memory_plan import StepShape, _probe, estimate
from rwkv_plug.training.plan import histogram, run_steps, trained_tokens

TESTS = Path(__file__).resolve().parents[1]
EXAMPLES = TESTS.parent / "examples"
#: every block of 64 KiB or more its own mapping, returned when freed (see memory_probe.py)
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _probe_script(*args: str) -> dict:
    env = dict(os.environ, **MALLOC)
    proc = subprocess.run([sys.executable, str(TESTS / "memory_probe.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _shapes(n_layer: int, n_embd: int, vocab: int) -> tuple[type, dict]:
    arch = plugins.models().get("rwkv5")
    sd = arch.init_state_dict(n_layer, n_embd, vocab)
    return arch, {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.slow
def test_counting_under_fake_tensors_equals_a_real_forward():
    """The activation term counts, under FakeTensorMode, exactly what a real forward keeps."""
    from rwkv_plug.training.loss import chunk_loss, top_logit_pull
    from rwkv_plug.training.memory_plan import _Saved

    arch, shapes = _shapes(2, 128, 300)
    B, T = 2, 40  # a chunk of 32 tokens and a ragged one: the torch kernel's two paths
    counted = _probe(arch, shapes, 2, StepShape(microbatch=B, ctx_len=T, chunks=1, head_chunk=0))

    model = arch.from_state_dict(arch.init_state_dict(2, 128, 300), kernel="torch")
    saved = _Saved(list(model.parameters()))
    idx = torch.randint(0, 300, (B, T))
    state = tuple(s.requires_grad_() for s in model.zero_state(B))
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        logits, _ = model(idx, state)
        activations = saved.total
        mask = torch.ones(B, T, dtype=torch.long)
        chunk_loss(logits, idx, mask, torch.tensor(float(B * T)), B, l2wrap=False)
        top_logit_pull(logits, mask, 1e-4)
    assert counted[:3] == (activations, saved.total - activations, sum(s.numel() * 4 for s in state))
    assert activations > 20 * B * T * 128 * 4  # a real count: far more than the residual stream


@pytest.mark.slow
@pytest.mark.parametrize("n_layer, n_embd, vocab, micro, ctx, length", [
    (2, 128, 65536, 1, 128, 513),  # the demo's model: world vocab, 4 chunks; weights and logits dominate
    (2, 256, 2048, 2, 256, 2049),  # 8 chunks, two rows
    (1, 512, 256, 16, 16, 401),  # 25 chunks of 16 rows: the kept chunk-start states are a third
])
@pytest.mark.slow
def test_the_estimate_is_within_a_quarter_of_a_measured_step(n_layer, n_embd, vocab, micro, ctx, length):
    arch, shapes = _shapes(n_layer, n_embd, vocab)
    chunks = -(-(length - 1) // ctx)
    plan = estimate(arch, shapes, vocab, StepShape(microbatch=micro, ctx_len=ctx, chunks=chunks))
    measured = _probe_script("step", *map(str, (n_layer, n_embd, vocab, micro, ctx, length)))["peak"]
    assert 0.75 * measured <= plan.total <= 1.25 * measured, (plan.lines(), measured)
    if chunks > 20:  # the kept states are a real part of it, not noise
        kept = next(t.nbytes for t in plan.terms if t.name == "kept states")
        assert kept > 0.25 * measured


def _demo(tmp_path: Path) -> Path:
    """examples/demo.yaml with its corpus and a fresh L2-D128 world model, in tmp_path."""
    from rwkv_plug.models.io import save_state_dict

    shutil.copy(EXAMPLES / "demo.yaml", tmp_path / "demo.yaml")
    (tmp_path / "data").mkdir()
    shutil.copy(EXAMPLES / "data" / "demo_corpus.txt", tmp_path / "data" / "demo_corpus.txt")
    arch = plugins.models().get("rwkv5")
    save_state_dict(arch.init_state_dict(2, 128, 65536), tmp_path / "out" / "demo" / "L2-D128-world-init.pth")
    return tmp_path / "demo.yaml"


@pytest.mark.slow
def test_plan_on_the_demo_config_and_fits_measured_peak(offline_data, tmp_path):
    import datasets
    from click.testing import CliRunner

    from rwkv_plug.core.cli import cli

    config = _demo(tmp_path)
    result = CliRunner().invoke(cli, ["plan", str(config)])
    assert result.exit_code == 0, result.output
    out = result.output
    train = datasets.load_from_disk(str(tmp_path / "out" / "demo" / "datapath"))["train"]
    lengths = [len(r) for r in train["input_ids"]]
    targets = sum(sum(m[1:]) for m in train["loss_mask"])
    n = len(lengths)
    assert re.search(rf"samples +{n:,} \(test split 4\)", out)
    assert re.search(rf"tokens +{sum(lengths):,} \(average 512 per sample, longest 512\)", out)
    assert re.search(rf"trained tokens +{targets:,} ", out)
    assert re.search(rf"^ +4 chunks +{n:,} +#+$", out, re.M)  # 512 tokens at ctx_len 128
    assert f"per epoch        {n:,} microbatches per device" in out
    assert f"{-(-n // 2):,} optimizer steps (/ 2, rounded up)" in out
    assert "this run         40 optimizer steps" in out
    for term in ("weights", "gradients", "optimizer", "activations", "head and loss", "kept states"):
        assert re.search(rf"^  {term} +[\d.]+ \w+ +=", out, re.M), term
    assert "128 x V*4 logits of one head chunk" in out and "3 chunk starts" in out  # ctx_len 128 < 1024

    # fit's measured peak growth from the start of training (weights resident) to the end of its
    # 2nd optimizer step, against the plan's total less the weights
    total = float(re.search(r"^  total +([\d.]+) MiB", out, re.M).group(1)) * 2**20
    weights = float(re.search(r"^  weights +([\d.]+) MiB", out, re.M).group(1)) * 2**20
    measured = _probe_script("fit", str(config))["peak"]
    assert 0.75 * measured <= total - weights <= 1.25 * measured, (out, measured)


def test_trained_tokens_follow_the_mask_and_the_learning_range():
    import datasets

    rows = {"input_ids": [[1] * 9, [1] * 5, [1]], "loss_mask": [[1, 1, 0, 1, 1, 1, 1, 0, 1], [0, 1, 1, 1, 1], [1]]}
    ds = datasets.Dataset.from_dict(rows)
    # targets are positions 1.. of a row (the first token is never a target)
    assert trained_tokens(ds, ctx_len=4, learning_range=-1) == 6 + 4 + 0
    # the 9-token row is 2 chunks (targets 1-4, 5-8): only the second is learned; the others have 1 chunk
    assert trained_tokens(ds, ctx_len=4, learning_range=1) == 3 + 4 + 0


def test_steps_end_at_the_first_limit_as_lightning_does():
    assert run_steps(101, 2, 40, None) == (40, "trainer.max_steps")
    assert run_steps(101, 2, -1, 3) == (153, "trainer.max_epochs 3")
    assert run_steps(101, 2, 1000, 3)[0] == 153
    assert run_steps(10, 1, None, None)[0] == 10_000


def test_histogram_buckets_many_counts_by_powers_of_two():
    assert [line.split()[0] for line in histogram({1: 5, 3: 2})] == ["1", "3"]
    many = {c: 1 for c in range(1, 40)}
    labels = [line.split()[0] for line in histogram(many)]
    assert labels == ["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64"]
    assert sum(int(line.split()[2].replace(",", "")) for line in histogram(many)) == 39


@pytest.mark.slow
def test_state_tuning_trains_only_the_start_states():
    arch, shapes = _shapes(2, 128, 1000)
    full = estimate(arch, shapes, 1000, StepShape(microbatch=1, ctx_len=64, chunks=3))
    state = estimate(arch, shapes, 1000, StepShape(microbatch=1, ctx_len=64, chunks=3, tuning="state"))
    grads = {p.name: p.nbytes for p in state.terms}
    assert grads["gradients"] == 3 * 2 * 2 * 64 * 64 * 4  # 3 copies x 2 layers x H=2 x N x N fp32
    assert grads["optimizer"] == 2 * 2 * 2 * 64 * 64 * 4
    full_act = next(t.nbytes for t in full.terms if t.name == "activations")
    assert grads["activations"] < full_act  # frozen weights: no inputs kept for weight gradients


@pytest.mark.parametrize("arch_name", ["rwkv5", "rwkv7"])
@pytest.mark.parametrize("targets", [None, ["key", "att.output"], r"blocks\.1\..*value"])
def test_lora_counts_the_adapters_peft_trains(arch_name, targets):
    from peft import LoraConfig

    from rwkv_plug.models import load_model
    from rwkv_plug.models.lora import add_lora, planned_trainable
    from rwkv_plug.training.tuning import apply_tuning

    arch = plugins.models().get(arch_name)
    sd = arch.init_state_dict(2, 128, 1000)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    model = load_model(sd, kernel="torch")
    if isinstance(targets, str):  # a regular expression: only an adapter folder's config carries one
        add_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    else:
        apply_tuning(model, {"tuning": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                             "lora_target_modules": targets, "lora_adapter": None, "lora_options": {}},
                     log=lambda _: None)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trained == planned_trainable(shapes, 4, targets)
    plan = estimate(arch, shapes, 1000, StepShape(microbatch=1, ctx_len=64, chunks=3, tuning="lora", lora_r=4,
                                                  lora_targets=targets))
    terms = {t.name: t.nbytes for t in plan.terms}
    assert terms["optimizer"] == 2 * trained * 4 and terms["gradients"] == 3 * trained * 4
    assert not plan.notes


def test_lora_from_an_adapter_folder_plans_with_its_rank_and_targets(tmp_path):
    import types

    from peft import LoraConfig

    from rwkv_plug.models import load_model
    from rwkv_plug.models.lora import add_lora, save_adapter
    from rwkv_plug.training.plan import _lora_shape

    model = load_model(plugins.models().get("rwkv5").init_state_dict(1, 64, 100), kernel="torch")
    save_adapter(add_lora(model, LoraConfig(r=6, lora_alpha=8, target_modules=["value", "key"])), tmp_path)
    m = types.SimpleNamespace(tuning="lora", lora_r=32, lora_target_modules=None, lora_adapter=str(tmp_path),
                              lora_options={"use_rslora": True})
    assert _lora_shape(m) == {"lora_r": 6, "lora_targets": ("key", "value"), "lora_options": True}
    assert _lora_shape(types.SimpleNamespace(tuning="full")) == {}
