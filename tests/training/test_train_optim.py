"""LR schedule values, layerwise parameter groups, collation, sampler."""

from __future__ import annotations

import math

import pytest
import torch

from rwkv_plug.training.batches import EvalRows, EvalSampler, ResumableSampler, collate, padded_length
from rwkv_plug.core.interfaces import ModelArch
from rwkv_plug.models.arch import RWKV5Arch
from rwkv_plug.training.optim import LrSchedule, build_optimizer, schedule_steps


def test_warmup_goes_from_02_to_1_then_stays():
    s = LrSchedule(1e-3, 1e-5, warmup_steps=10)
    assert s.lr_at(0) == pytest.approx(0.2e-3)
    assert s.lr_at(5) == pytest.approx(1e-3 * (0.2 + 0.8 * 0.5))
    assert s.lr_at(10) == pytest.approx(1e-3)
    assert s.lr_at(1000) == pytest.approx(1e-3)  # lr_final ignored with warmup


def test_constant_when_final_equals_init():
    s = LrSchedule(3e-4, 3e-4, total_steps=10)
    assert {s.lr_at(i) for i in range(30)} == {3e-4}


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decay_reaches_final_and_stays(kind):
    s = LrSchedule(1e-3, 1e-4, lr_type=kind, total_steps=20)
    assert s.lr_at(0) == pytest.approx(1e-3)
    mid = 1e-4 + 0.9e-3 * (0.5 * (1 + math.cos(math.pi * 0.25)) if kind == "cosine" else 0.75)
    assert s.lr_at(5) == pytest.approx(mid)
    for step in (20, 21, 40, 1000):  # fixed: cosine no longer rises after the period
        assert s.lr_at(step) == pytest.approx(1e-4)
    vals = [s.lr_at(i) for i in range(25)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_schedule_length():
    assert schedule_steps(7, "step", 100, None, 3) == 7
    assert schedule_steps(2, "epoch", 100, None, 3) == 6
    assert schedule_steps(-1, "epoch", 100, None, 3) == 100
    assert schedule_steps(-1, "epoch", -1, 4, 3) == 12
    # the whole run ends at the first limit reached
    assert schedule_steps(-1, "step", 100, 2, 20) == 40
    assert schedule_steps(-1, "step", 30, 2, 20) == 30


@pytest.mark.parametrize("limits", [
    {"max_epochs": 2, "limit_train_batches": 2},  # 2 of the 8 batches an epoch
    {"max_epochs": 2, "limit_train_batches": 0.25},
    {"max_steps": 100, "max_epochs": 2, "limit_train_batches": 2},  # the epochs end it first
])
def test_the_decay_ends_at_lr_final_when_the_run_ends(limits):
    import warnings

    import lightning as L

    from rwkv_plug.training.module import RwkvTrainingModule, TrainSettings
    from rwkv_plug.training.testing import ToyRWKV

    warnings.filterwarnings("ignore")
    model = {"ctx_len": 4, "bptt_learning": True, "bptt_truncated_learning": False, "bptt_learning_range": -1,
             "lr_init": 1e-2, "lr_final": 1e-3, "lr_period": -1, "lr_period_type": "step", "lr_type": "linear",
             "warmup_steps": -1, "weight_decay": 0.0, "layerwise_lr": False, "beta1": 0.9, "beta2": 0.99,
             "adam_eps": 1e-8, "consolidated_logging": True}
    rows = [{"input_ids": list(range(1, 7)), "loss_mask": [1] * 6} for _ in range(8)]
    module = RwkvTrainingModule(ToyRWKV(), TrainSettings(model=model, microbatch_size=1), rows, None)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                        use_distributed_sampler=False, **limits)
    trainer.fit(module)
    assert trainer.global_step == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)


class _Named(torch.nn.Module):
    """The kinds of parameter an x052 block has."""

    def __init__(self):
        super().__init__()
        self.time_decay = torch.nn.Parameter(torch.zeros(2, 4))
        self.time_faaaa = torch.nn.Parameter(torch.zeros(2, 4))
        self.time_mix_k = torch.nn.Parameter(torch.zeros(1, 1, 4))
        self.key = torch.nn.Linear(4, 4, bias=False)
        self.ln = torch.nn.LayerNorm(4)


def test_layerwise_groups_and_decay():
    m = _Named()
    groups = {g["name"]: g for g in RWKV5Arch.param_groups(m.named_parameters(), 0.01, True)}
    ids = lambda g: {id(p) for p in groups[g]["params"]}  # noqa: E731
    assert set(groups) == {"1x", "2x", "decay"}
    assert ids("2x") == {id(m.time_decay)} and groups["2x"]["lr_scale"] == 2.0
    assert ids("decay") == {id(m.key.weight)} and groups["decay"]["weight_decay"] == 0.01
    assert ids("1x") == {id(m.time_faaaa), id(m.time_mix_k), id(m.ln.weight), id(m.ln.bias)}
    assert all(groups[g]["weight_decay"] == 0 for g in ("1x", "2x"))
    no_decay = {g["name"] for g in RWKV5Arch.param_groups(m.named_parameters(), 0.0, True)}
    assert "decay" not in no_decay
    # without layerwise_lr: one group, the decay on every parameter (as before)
    (flat,) = RWKV5Arch.param_groups(m.named_parameters(), 0.01, False)
    assert len(flat["params"]) == 6 and flat["weight_decay"] == 0.01 and flat["lr_scale"] == 1.0


def test_the_default_groups_know_no_parameter_names():
    m = _Named()
    groups = {g["name"]: g for g in ModelArch.param_groups(m.named_parameters(), 0.01, True)}
    assert set(groups) == {"1x", "decay"}  # time_decay gets no 2x without an architecture
    assert {id(p) for p in groups["decay"]["params"]} == {id(m.time_decay), id(m.time_faaaa), id(m.key.weight)}


def test_the_training_module_asks_the_models_architecture_for_its_groups():
    import lightning as L

    from rwkv_plug.models import load_model
    from rwkv_plug.models.init7 import init_state_dict
    from rwkv_plug.training.module import RwkvTrainingModule, TrainSettings

    model = load_model(init_state_dict(1, 64, 10, seed=0))
    settings = {"lr_init": 1e-3, "lr_final": 1e-3, "lr_period": -1, "lr_period_type": "step", "lr_type": "cosine",
                "warmup_steps": -1, "weight_decay": 0.001, "layerwise_lr": True, "beta1": 0.9, "beta2": 0.99,
                "adam_eps": 1e-18, "ctx_len": 4, "bptt_learning": True, "bptt_truncated_learning": False,
                "bptt_learning_range": -1}
    rows = [{"input_ids": [1, 2, 3], "loss_mask": [1, 1, 1]}] * 2
    module = RwkvTrainingModule(model, TrainSettings(model=settings), rows, None)
    module.trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False)
    opt = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert [p is model.blocks[0].att.w0 for p in groups["2x"]["params"]] == [True]


def test_optimizer_kind_and_multipliers_follow_schedule():
    m = _Named()
    base = {"weight_decay": 0.0, "layerwise_lr": True, "beta1": 0.9, "beta2": 0.99, "adam_eps": 1e-8}
    opt, sched = build_optimizer(m, base, LrSchedule(1e-3, 1e-4, "linear", total_steps=4), RWKV5Arch)
    assert type(opt) is torch.optim.Adam
    opt2, _ = build_optimizer(m, {**base, "weight_decay": 0.1}, LrSchedule(1e-3, 1e-3))
    assert type(opt2) is torch.optim.AdamW
    for _ in range(2):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["1x"] == pytest.approx(1e-3 - 0.9e-3 * 0.5)
    assert lrs["2x"] == pytest.approx(2 * lrs["1x"])


def test_collate_pads_to_the_longest_sample_not_to_whole_chunks():
    rows = [{"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]},
            {"input_ids": list(range(1, 11)), "loss_mask": [1] * 10}]
    b = collate(rows)
    assert b["input_ids"].shape == (2, 10) == (2, padded_length(10))  # not 13 (whole chunks of 4)
    assert b["lengths"].tolist() == [3, 10]
    assert b["input_ids"][0].tolist() == [5, 6, 7] + [0] * 7
    assert b["loss_mask"][0].tolist() == [0, 1, 1] + [0] * 7
    assert padded_length(5) == 5 and padded_length(1) == 2  # one input and one target at least


def test_padding_share_is_what_collate_pads_and_points_at_packing_when_large():
    from rwkv_plug.training.padding import padding_line, padding_share

    lengths = [3, 40, 5, 5, 9]
    rows = [{"input_ids": [1] * n, "loss_mask": [1] * n} for n in lengths]
    batches = [collate(rows[i : i + 2]) for i in range(0, 5, 2)]  # (3, 40), (5, 5), (9)
    positions = sum(b["input_ids"].numel() for b in batches)
    assert padding_share(lengths, 2) == pytest.approx((positions - sum(lengths)) / positions)  # 37 / 99
    # two ranks reading rows 0, 2, 4 and 1, 3: (3, 5), (9) and (40, 5)
    assert padding_share(lengths, 2, [[0, 2, 4], [1, 3]]) == pytest.approx((2 + 35) / (10 + 9 + 80))
    assert padding_share(lengths, 1) == 0.0
    big = padding_line(0.37, 2, packing=False, where=" of an epoch")
    assert big.startswith("padding: 37.0% of the token positions in the training batches of an epoch "
                          "(microbatch_size 2; each batch is padded to its longest sample)")
    assert "data.packing_enable: true" in big
    assert "packing_enable" not in padding_line(0.37, 2, packing=True)
    assert "packing_enable" not in padding_line(0.2, 2, packing=False)


def test_sampler_interleaves_ranks_drops_tail_and_skips_on_resume():
    r0, r1 = ResumableSampler(7, 2, 0), ResumableSampler(7, 2, 1)
    assert list(r0) == [0, 2, 4] and list(r1) == [1, 3, 5] and len(r0) == 3
    s = ResumableSampler(10, 1, 0, shuffle=True, seed=3)
    s.set_epoch(1)
    order = list(s)
    s.skip(1, 4)
    assert list(s) == order[4:]
    assert list(s) == order  # only the resumed epoch is shortened
    s.set_epoch(2)
    assert sorted(s) == list(range(10)) and list(s) != order


@pytest.mark.parametrize("size,world", [(1, 2), (3, 2), (7, 3), (4, 2), (0, 2)])
def test_eval_sampler_covers_every_row_once_with_equal_lengths_per_rank(size, world):
    rows = [{"input_ids": [i + 1, i + 2], "loss_mask": [1, 1]} for i in range(size)]
    data = EvalRows(rows)
    samplers = [EvalSampler(size, world, r) for r in range(world)]
    assert len({len(s) for s in samplers}) == 1 and len(samplers[0]) == -(-size // world)
    picked = [i for s in samplers for i in s]
    assert sorted(i for i in picked if i < size) == list(range(size))
    for i in picked:  # past the end: a filler that adds no loss tokens
        assert data[i] is rows[i] if i < size else sum(data[i]["loss_mask"]) == 0
