"""Exact BPTT with a budget of kept chunk-start states (model.bptt_kept_states).

The budget only changes which start states are kept and which are run
again in the backward: the gradients must be those of the path that keeps
every start state, in fp64 to 1e-12, and the kept states must stay within
the budget however long the sample.
"""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

from rwkv_plug.training import recompute_schedule as schedule
from rwkv_plug.training.bptt import BpttSettings, sequence_loss
from rwkv_plug.training.testing import ToyRWKV
from test_bptt import _prefix_node  # the chunked-prefix node of a loss graph

V = 40


def _data(B, chunks, ctx, seed=1, extra=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, chunks * ctx + extra), generator=g)
    mask = (torch.rand(ids.shape, generator=g) > 0.3).long()
    return ids, mask


def _run(model, ids, mask, seed=0, **settings):
    """(loss, grads by name, the KeptStarts the step used) of one training step."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = sequence_loss(model, ids, mask, BpttSettings(**settings), train=True)
    kept = _prefix_node(out.loss.grad_fn).kept
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads, kept


def _assert_same(got, ref):
    assert got.keys() == ref.keys()
    for n in ref:
        scale = ref[n].abs().max().clamp(min=1e-30)
        assert ((got[n] - ref[n]).abs().max() / scale).item() < 1e-12, n


def _rwkv5(dropout=0.0):
    from rwkv_plug.models import load_model
    from rwkv_plug.models.init import init_state_dict

    sd = init_state_dict(2, 64, V, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in sd.items()}  # every path carries gradient
    return load_model(sd, kernel="torch", dtype=torch.float64, dropout=dropout)


# -- the schedule -----------------------------------------------------------------------
@lru_cache(maxsize=None)
def _fewest_runs(length: int, slots: int) -> int:
    """Brute force over every split: the fewest chunk runs to reverse ``length`` chunks."""
    if length <= 1:
        return 0
    if slots == 0:
        return length * (length - 1) // 2
    return min(m + _fewest_runs(length - m, slots - 1) + _fewest_runs(m, slots) for m in range(1, length))


def _simulate(n: int, slots: int) -> tuple[int, int]:
    """Replays the schedule: (chunk runs of forward sweep + backward, most states kept at once)."""
    kept = set(schedule.forward_keeps(n, slots))
    swept = max(kept, default=0)
    peak, runs, ran, steps = len(kept), swept, None, []
    for act in schedule.backward(n, slots):
        if isinstance(act, schedule.Run):
            assert act.start == 0 or act.start in kept, (n, slots, act)
            runs += act.stop - act.start
            if act.keep:
                kept.add(act.stop)
                peak = max(peak, len(kept))
            else:
                ran = act.stop
        elif isinstance(act, schedule.Drop):
            kept.remove(act.chunk)
        else:
            assert act.chunk in (0, ran) or act.chunk in kept, (n, slots, act)
            steps.append(act.chunk)
            ran = None
    assert steps == list(range(n - 1, -1, -1)), (n, slots, steps)
    return runs, peak


@pytest.mark.parametrize("slots", [-1, 0, 1, 2, 3, 5])
def test_the_schedule_steps_every_chunk_once_in_reverse_within_the_budget_at_least_work(slots):
    for n in range(1, 41):
        runs, peak = _simulate(n, slots)
        if slots < 0:  # unbounded: every start kept, no chunk runs again
            assert (runs, peak) == (max(0, n - 1), max(0, n - 1))
            continue
        assert peak <= slots
        assert runs == _fewest_runs(n, slots) == schedule.runs(n, slots), n  # Griewank's optimum
        assert schedule.extra_runs(n, slots) == runs - max(schedule.forward_keeps(n, slots), default=0)


def test_a_budget_that_fits_every_start_keeps_every_start_and_adds_no_work():
    assert schedule.forward_keeps(9, 8) == schedule.forward_keeps(9, -1) == list(range(1, 9))
    assert schedule.extra_runs(9, 8) == 0
    assert not any(isinstance(a, schedule.Run) for a in schedule.backward(9, 8))


# -- gradients: equal to the keep-everything path --------------------------------------
@pytest.mark.parametrize("chunks,budget", [(4, 1), (5, 1), (5, 2), (7, 2), (7, 3), (9, 2), (6, 5), (6, 50)])
def test_gradients_equal_the_keep_everything_path_fp64(chunks, budget):
    model = ToyRWKV(vocab_size=V, n_layer=2).double()
    ids, mask = _data(2, chunks, 3)
    ref_loss, ref, _ = _run(model, ids, mask, ctx_len=3, kept_states=-1)
    loss, got, kept = _run(model, ids, mask, ctx_len=3, kept_states=budget)
    assert torch.equal(loss, ref_loss)
    _assert_same(got, ref)
    # the prefix is chunks - 1 chunks: it needs chunks - 2 starts (chunk 0's are zeros)
    assert kept.peak == min(budget, chunks - 2) and kept.states.slots == min(budget, chunks - 2)


@pytest.mark.parametrize("options", [
    {"learning_range": 2},
    {"truncated": True},
    {"truncated": True, "learning_range": 3},
    {"l2wrap": False},
])
def test_learning_range_and_truncation_give_the_same_gradients_with_a_budget(options):
    model = ToyRWKV(vocab_size=V, n_layer=2).double()
    ids, mask = _data(3, 8, 2, extra=0)  # the last chunk is one token short
    _, ref, _ = _run(model, ids, mask, ctx_len=2, kept_states=-1, **options)
    _, got, _ = _run(model, ids, mask, ctx_len=2, kept_states=2, **options)
    _assert_same(got, ref)


def test_dropout_masks_are_replayed_when_start_states_are_rebuilt():
    model = _rwkv5(dropout=0.2).train()
    ids, mask = _data(2, 6, 4)
    _, ref, _ = _run(model, ids, mask, seed=7, ctx_len=4, kept_states=-1)
    _, got, kept = _run(model, ids, mask, seed=7, ctx_len=4, kept_states=1)
    assert kept.peak == 1
    _assert_same(got, ref)
    # and the masks do matter: another seed gives other gradients
    _, other, _ = _run(model, ids, mask, seed=8, ctx_len=4, kept_states=1)
    assert max((other[n] - ref[n]).abs().max().item() for n in ref) > 1e-6


def test_the_tuned_start_state_gets_the_same_gradient_with_a_budget():
    from rwkv_plug.training.tuning import apply_tuning

    model = _rwkv5()
    apply_tuning(model, {"tuning": "state", "state_file": None}, log=lambda _: None)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.tuned_state.wkv:
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    ids, mask = _data(2, 7, 3)
    _, ref, _ = _run(model, ids, mask, ctx_len=3, kept_states=-1)
    _, got, _ = _run(model, ids, mask, ctx_len=3, kept_states=2)
    assert sorted(ref) == ["tuned_state.wkv.0", "tuned_state.wkv.1"]
    assert all(ref[n].abs().max() > 1e-6 for n in ref)
    _assert_same(got, ref)


# -- memory: bounded by the budget -------------------------------------------------------
@pytest.mark.slow
def test_kept_states_stay_within_the_budget_for_a_many_chunk_sample():
    model = ToyRWKV(vocab_size=V, n_layer=2)
    state_bytes = sum(s.numel() * s.element_size() for s in model.zero_state(1))
    ids, mask = _data(1, 300, 2)
    _, bounded, kept = _run(model, ids, mask, ctx_len=2, kept_states=4)
    assert kept.peak == 4 and kept.states.slots == 4
    assert kept.nbytes() == 4 * state_bytes  # the buffers hold 4 states, not 298
    rng_bytes = torch.get_rng_state().numel()
    assert kept.rngs.nbytes() == 5 * rng_bytes  # one per slot, plus chunk 0's
    _, _, everything = _run(model, ids, mask, ctx_len=2, kept_states=-1)
    assert everything.nbytes() == 298 * state_bytes


# -- auto: a budget in bytes, relative to the weights ------------------------------------
def test_auto_keeps_a_tenth_of_the_training_bytes_in_states_and_at_least_the_default():
    # 10% of (weights + 3 x trained weights) over one state's bytes (state + RNG state)
    assert schedule.auto_slots(4_000_000, 4_000_000, 1000) == 1600
    assert schedule.auto_slots(4_000_000, 0, 1000) == 400  # nothing trained: the weights alone
    assert schedule.auto_slots(4_000_000, 4_000_000, 1001) == 1598  # whole states only
    assert schedule.auto_slots(10_000, 10_000, 1000) == schedule.DEFAULT_KEPT_STATES  # small model: the minimum
    # independent of the sample: the schedule then never keeps more than that
    slots = schedule.auto_slots(4_000_000, 4_000_000, 1000)
    assert schedule.slots_used(1_000_000, slots) == slots


def test_auto_sizes_the_budget_from_the_model_and_keeps_the_gradients(monkeypatch):
    from rwkv_plug.training.chunk_states import kept_slots

    model = _rwkv5()
    weights = sum(p.numel() * 8 for p in model.parameters())  # fp64, all trained
    state = model.zero_state(2)
    one = sum(s.numel() * s.element_size() for s in state) + torch.get_rng_state().numel()
    rng = (torch.get_rng_state(),)
    assert kept_slots("auto", model, state, rng) == max(64, int(0.1 * 4 * weights) // one)
    assert kept_slots(5, model, state, rng) == 5
    # a tiny budget (3 states) on a 9-chunk sample: within it, gradients as when keeping every start
    monkeypatch.setattr(schedule, "AUTO_FRACTION", 3.5 * one / (4 * weights))
    monkeypatch.setattr(schedule, "DEFAULT_KEPT_STATES", 1)
    ids, mask = _data(2, 9, 3)
    _, ref, _ = _run(model, ids, mask, ctx_len=3, kept_states=-1)
    _, got, kept = _run(model, ids, mask, ctx_len=3, kept_states="auto")
    assert kept.peak == 3 and kept.states.slots == 3
    _assert_same(got, ref)


# -- the config key ------------------------------------------------------------------------
@pytest.mark.parametrize("value, ok", [(-1, True), (1, True), (200, True), ("auto", True),
                                       (0, False), (-2, False), ("many", False), (2.5, False), (True, False)])
def test_the_config_key_takes_minus_one_a_positive_count_or_auto(tmp_path, value, ok):
    from rwkv_plug.core.errors import ConfigError
    from rwkv_plug.training.config import load_fit_config
    from rwkv_plug.training.module import TrainSettings

    (tmp_path / "m.pth").write_bytes(b"x")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{load_model: m.pth, lr_init: 1e-4, bptt_kept_states: {value}}}\n"
                   f"data: {{data_path: {tmp_path}/d, source: x.txt}}\n")
    if not ok:
        with pytest.raises(ConfigError, match=f"model.bptt_kept_states must be -1 .*, 1 or more, or auto .*got '?{value}"):
            load_fit_config(cfg)
        return
    model = load_fit_config(cfg).model
    assert TrainSettings(model=dict(model)).bptt.kept_states == value
    cfg.write_text(f"model: {{load_model: m.pth, lr_init: 1e-4}}\ndata: {{data_path: {tmp_path}/d, source: x.txt}}\n")
    assert load_fit_config(cfg).model["bptt_kept_states"] == schedule.DEFAULT_KEPT_STATES


# -- the plan's kept-state term follows the budget, and a measured step -------------------
def _shapes(n_layer: int, n_embd: int, vocab: int):
    from rwkv_plug.core import plugins

    arch = plugins.models().get("rwkv5")
    return arch, {k: tuple(v.shape) for k, v in arch.init_state_dict(n_layer, n_embd, vocab).items()}


@pytest.mark.slow
def test_the_plan_counts_the_budgeted_kept_states():
    from rwkv_plug.training.memory_plan import StepShape, estimate

    arch, shapes = _shapes(2, 128, 256)
    state = 2 * (2 * 1 * 128 * 4 + 1 * 2 * 64 * 64 * 4)  # B=1, 2 layers, 2 heads
    rng = torch.get_rng_state().numel()

    def kept(chunks, budget):
        plan = estimate(arch, shapes, 256, StepShape(microbatch=1, ctx_len=64, chunks=chunks, kept_states=budget))
        return next(t.nbytes for t in plan.terms if t.name == "kept states"), plan.notes

    assert kept(2000, -1)[0] == 1999 * (state + rng)  # every start: chunks 1 .. n-1
    bounded, notes = kept(2000, 8)
    assert bounded == 9 * (state + rng)  # 8 kept + the one handed to the last chunk
    assert any(f"runs {schedule.extra_runs(1999, 8)} chunks again" in n for n in notes)
    assert kept(10, 8) == (9 * (state + rng), [])  # 10 chunks fit 8 slots: all kept, no extra runs
    # auto: 10% of (weights + gradients + 2 Adam moments), fp32, here below the minimum of 64
    params = sum(math.prod(s) for s in shapes.values())
    assert schedule.auto_slots(4 * params, 4 * params, state + rng) == 64
    assert kept(2000, "auto")[0] == 65 * (state + rng)


@pytest.mark.slow
def test_a_budget_bounds_the_measured_peak_and_the_plan_follows_it():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from rwkv_plug.training.memory_plan import StepShape, estimate

    probe = Path(__file__).resolve().parents[1] / "memory_probe.py"
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")  # see memory_probe.py

    def measured(kept):
        args = ["step", "1", "512", "256", "16", "16", "641", str(kept)]  # 40 chunks of 16 rows
        proc = subprocess.run([sys.executable, str(probe), *args], capture_output=True, text=True, env=env,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])["peak"]

    arch, shapes = _shapes(1, 512, 256)
    for kept in (-1, 4):
        plan = estimate(arch, shapes, 256, StepShape(microbatch=16, ctx_len=16, chunks=40, kept_states=kept))
        peak = measured(kept)
        assert 0.75 * peak <= plan.total <= 1.25 * peak, (kept, plan.lines(), peak)
        if kept == -1:
            everything = peak
    # the budget saves what the formula says: 39 - 5 = 34 kept starts of 2.1 MB (+ RNG state) each
    state = 2 * 16 * 512 * 4 + 16 * 8 * 64 * 64 * 4
    saved = 34 * (state + torch.get_rng_state().numel())
    assert 0.75 * saved <= everything - peak <= 1.25 * saved, (everything, peak, saved)
