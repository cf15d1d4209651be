"""Resume continues exactly: optimizer, LR schedule and data position intact."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rwkv_plug.training.checkpoint import atomic_checkpoint_io, find_resume
from rwkv_plug.training.module import RwkvTrainingModule, TrainSettings
from rwkv_plug.training.testing import ToyRWKV

MODEL = {
    "ctx_len": 4, "bptt_learning": True, "bptt_truncated_learning": False, "bptt_learning_range": -1,
    "lr_init": 3e-2, "lr_final": 1e-3, "lr_period": -1, "lr_period_type": "step", "lr_type": "cosine",
    "warmup_steps": -1, "weight_decay": 0.01, "layerwise_lr": True, "beta1": 0.9, "beta2": 0.99,
    "adam_eps": 1e-8, "consolidated_logging": True,
}


def toy_rows(n=5, seed=0, vocab=32):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 3 + (i * 5) % 11  # 1 to 3 chunks of 4
        ids = torch.randint(1, vocab, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "loss_mask": [1] * length})
    return rows


def make_module(accumulate=2, model_over=None, dropout=0.0):
    settings = TrainSettings(
        model={**MODEL, **(model_over or {})}, microbatch_size=1, accumulate_grad_batches=accumulate,
        shuffle=True, seed=7,
    )
    return RwkvTrainingModule(ToyRWKV(dropout=dropout), settings, toy_rows(), toy_rows(2, seed=1))


def make_trainer(root: Path, max_steps: int, accumulate=2, ckpt_every=1):
    return L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, accumulate_grad_batches=accumulate,
        default_root_dir=root, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=ckpt_every, save_top_k=-1,
                                   filename="{step}")],
        plugins=[atomic_checkpoint_io()],
    )


def params(module):
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.mark.parametrize(
    "over",
    [{}, {"warmup_steps": 3}, {"lr_period_type": "epoch", "lr_period": 1, "lr_type": "linear"}],
    ids=["cosine", "warmup", "epoch-period"],
)
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, over):
    # 5 rows, accumulate 2 -> 3 optimizer steps per epoch; step 4 is mid-epoch 2
    warnings.filterwarnings("ignore")
    L.seed_everything(0, verbose=False)
    full = make_module(model_over=over, dropout=0.1)
    make_trainer(tmp_path / "a", 7).fit(full)
    ckpt = tmp_path / "a" / "ckpt" / "step=4.ckpt"
    assert ckpt.is_file()

    L.seed_everything(0, verbose=False)
    resumed = make_module(model_over=over, dropout=0.1)
    trainer = make_trainer(tmp_path / "b", 7)
    trainer.fit(resumed, ckpt_path=str(ckpt), weights_only=True)
    assert trainer.global_step == 7
    a, b = params(full), params(resumed)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    # the resumed run did not redo the epoch: it consumed exactly the remaining microbatches
    assert resumed._epoch_batches == full._epoch_batches
    assert resumed._tokens == full._tokens


def test_checkpoints_are_written_atomically_and_auto_picks_newest(tmp_path):
    warnings.filterwarnings("ignore")
    module = make_module()
    make_trainer(tmp_path, 3).fit(module)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["step=1.ckpt", "step=2.ckpt", "step=3.ckpt"]  # no temp files left over
    assert find_resume("auto", tmp_path / "ckpt", log=lambda m: None).endswith("step=3.ckpt")
    msgs = []
    assert find_resume("auto", tmp_path / "empty", log=msgs.append) is None
    assert "starting fresh" in msgs[0]
    ck = torch.load(tmp_path / "ckpt" / "step=3.ckpt", weights_only=True)
    assert all(k.startswith("model.") for k in ck["state_dict"])


def _draws():
    import random

    import numpy as np

    return torch.rand(3).tolist(), random.random(), float(np.random.rand())


def test_per_rank_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    from rwkv_plug.training import rng

    states, expected = [], []
    for rank in range(2):  # two "ranks" with different streams
        L.seed_everything(100 + rank, verbose=False)
        states.append(rng.capture(torch.device("cpu")))
        expected.append(_draws())
    assert expected[0] != expected[1]
    torch.save({"rwkv_plug": {"rng": states}}, tmp_path / "c.ckpt")
    loaded = rng.from_checkpoint(torch.load(tmp_path / "c.ckpt", weights_only=True)["rwkv_plug"])
    for rank in (1, 0):
        own, note = rng.pick(loaded, rank, 2)
        assert note is None
        L.seed_everything(0, verbose=False)
        rng.restore(own, torch.device("cpu"))
        assert _draws() == expected[rank], rank  # torch, python and numpy streams all continue


def test_a_different_world_size_restores_what_it_can_and_says_so():
    from rwkv_plug.training import rng

    states = [{"torch": torch.get_rng_state()}, {"torch": torch.get_rng_state()}]
    own, note = rng.pick(states, 0, 1)
    assert own is states[0] and "2 rank(s) but this run has 1" in note and "the saved state of rank 1 is unused" in note
    own, note = rng.pick(states[:1], 1, 2)
    assert own is None and "rank 1: no saved state, kept the seeded one" in note
    assert "ranks 1-3: no saved state" in rng.pick(states[:1], 0, 4)[1]
    assert rng.pick([], 0, 2) == (None, None)
    # checkpoints from before per-rank states: rank 0's CPU state only
    legacy = rng.from_checkpoint({"rng_cpu": states[0]["torch"], "rng_cuda": []})
    assert len(legacy) == 1 and torch.equal(legacy[0]["torch"], states[0]["torch"])


class SeedPerRank(L.Callback):
    """Gives each rank its own random stream before training (a resume then restores over it)."""

    def on_fit_start(self, trainer, pl_module):
        torch.manual_seed(100 + trainer.global_rank)


def test_two_rank_resume_continues_each_ranks_dropout_stream(tmp_path):
    warnings.filterwarnings("ignore")

    def run(root, max_steps, ckpt=None):
        L.seed_everything(0, verbose=False)
        settings = TrainSettings(model=MODEL, microbatch_size=1, accumulate_grad_batches=1)
        module = RwkvTrainingModule(ToyRWKV(dropout=0.2), settings, toy_rows(8), None)
        trainer = L.Trainer(
            accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=max_steps, default_root_dir=root,
            logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, use_distributed_sampler=False, plugins=[atomic_checkpoint_io()],
            callbacks=[SeedPerRank(), ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1,
                                                      save_top_k=-1, filename="{step}")],
        )
        trainer.fit(module, ckpt_path=ckpt, weights_only=True)
        return params(module)

    full = run(tmp_path / "a", 5)
    ckpt = tmp_path / "a" / "ckpt" / "step=2.ckpt"
    assert len(torch.load(ckpt, weights_only=True)["rwkv_plug"]["rng"]) == 2
    resumed = run(tmp_path / "b", 5, str(ckpt))
    for k in full:
        assert torch.allclose(full[k], resumed[k], rtol=0, atol=1e-6), k
