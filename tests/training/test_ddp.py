"""Two CPU ranks over gloo: no hang with uneven chunk counts, same result as one process."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from conftest import two_ranks
from rwkv_plug.training.module import RwkvTrainingModule, TrainSettings
from rwkv_plug.training.testing import ToyRWKV

pytestmark = pytest.mark.slow  # every test here takes seconds: fit runs, subprocesses or the Triton interpreter

MODEL = {
    "ctx_len": 4, "bptt_learning": True, "bptt_truncated_learning": False, "bptt_learning_range": -1,
    "lr_init": 1e-2, "lr_final": 1e-2, "lr_period": -1, "lr_period_type": "step", "lr_type": "cosine",
    "warmup_steps": -1, "weight_decay": 0.0, "layerwise_lr": True, "beta1": 0.9, "beta2": 0.99,
    "adam_eps": 1e-8, "consolidated_logging": True,
}


def rows():
    g = torch.Generator().manual_seed(0)
    # even rows are short (1 chunk), odd rows long (3 chunks): rank 0 and rank 1 differ
    lengths = [3, 12, 5, 10, 2, 13, 4, 11]
    return [{"input_ids": torch.randint(1, 32, (n,), generator=g).tolist(), "loss_mask": [1] * n} for n in lengths]


class RecordSteps(L.Callback):
    """Every optimizer step's gradients as the optimizer sees them (after DDP's all-reduce),
    saved by rank 0 (the ranks are other processes)."""

    def __init__(self, folder):
        self.folder, self.grads = folder, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()})

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save(self.grads, self.folder / "grads.pt")


def train(folder, devices: int, accumulate: int):
    """3 optimizer steps; returns (final weights, each step's gradients, each step's logged train/loss)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    L.seed_everything(0, verbose=False)
    settings = TrainSettings(model=MODEL, microbatch_size=1, accumulate_grad_batches=accumulate)
    module = RwkvTrainingModule(ToyRWKV(), settings, rows(), None)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=two_ranks() if devices > 1 else "auto",
        max_steps=3, accumulate_grad_batches=accumulate, logger=CSVLogger(folder, name="", version=""),
        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False, callbacks=[RecordSteps(folder)],
    )
    trainer.fit(module)
    with (folder / "metrics.csv").open() as fh:
        losses = [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    weights = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    return weights, torch.load(folder / "grads.pt", weights_only=True), losses


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-30)) for k in b)


def test_two_ranks_take_the_gradient_and_log_the_loss_of_one_process_with_the_same_global_batch(tmp_path):
    """Accumulation 2 in one process and 2 ranks (gloo) see the same microbatches per step (rows
    0+1, 2+3, 4+5; 1 and 3 chunks per row, so the ranks run different real chunk counts).
    Their all-reduced gradients and logged losses are compared step by step, and step 1's with
    the mean of the two rows' own gradients and losses: a sum instead of a mean (factor 2) is
    off by 100%, five orders of magnitude over the tolerance."""
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss

    warnings.filterwarnings("ignore")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single, single_grads, single_losses = train(tmp_path / "one", devices=1, accumulate=2)
    double, double_grads, double_losses = train(tmp_path / "two", devices=2, accumulate=1)

    model, losses, grads = ToyRWKV(), [], []  # the weights both runs start from
    for r in rows()[:2]:
        model.zero_grad()
        out = sequence_loss(model, torch.tensor([r["input_ids"]]), torch.tensor([r["loss_mask"]]),
                            BpttSettings(ctx_len=4), train=True)
        out.loss.backward()
        losses.append(float(out.data_loss))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    expected = {n: (grads[0][n] + grads[1][n]) / 2 for n in grads[0]}

    assert len(single_grads) == len(double_grads) == len(single_losses) == len(double_losses) == 3
    assert _max_rel(single_grads[0], expected) < 1e-5
    assert _max_rel(double_grads[0], expected) < 1e-5
    for step in range(3):
        assert _max_rel(double_grads[step], single_grads[step]) < 1e-5, step
    # train/loss: the step's loss over its microbatches and ranks (not the last microbatch's)
    assert single_losses[0] == pytest.approx(sum(losses) / 2, rel=1e-6)
    assert double_losses == pytest.approx(single_losses, rel=1e-6)
    before = ToyRWKV().state_dict()
    for k in single:
        assert not torch.equal(single[k], before[k]) or k.endswith("bias"), k  # it trained
        assert torch.allclose(single[k], double[k], rtol=0, atol=1e-6), k


def validate(devices: int, val_rows: list) -> float:
    settings = TrainSettings(model=MODEL, microbatch_size=1)
    module = RwkvTrainingModule(ToyRWKV(), settings, rows(), val_rows)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=two_ranks() if devices > 1 else "auto", logger=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )
    trainer.validate(module)
    return float(trainer.callback_metrics["validation/loss"])


def test_validation_covers_every_row_once_when_rows_do_not_split_evenly_over_ranks():
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss

    warnings.filterwarnings("ignore")
    val = rows()[:3]
    val[2]["loss_mask"][:4] = [0] * 4  # rows weigh by their masked tokens
    model, ce, tokens = ToyRWKV(), 0.0, 0
    for r in val:  # the loss over every target token of the split, one row at a time
        ids, mask = torch.tensor([r["input_ids"]]), torch.tensor([r["loss_mask"]])
        out = sequence_loss(model, ids, mask, BpttSettings(ctx_len=4), train=False)
        n = int(mask[:, 1:].sum())
        ce, tokens = ce + float(out.loss) * n, tokens + n
    expected = ce / tokens
    assert abs(validate(1, val) - expected) < 1e-5
    # 3 rows on 2 ranks: rank 1 validates row 1 and a filler; 1 row: rank 1 has only a filler
    assert abs(validate(2, val) - expected) < 1e-5
    one = sequence_loss(model, torch.tensor([val[0]["input_ids"]]), torch.tensor([val[0]["loss_mask"]]),
                        BpttSettings(ctx_len=4), train=False)
    assert abs(validate(2, val[:1]) - float(one.loss)) < 1e-5


class RecordDropout(L.Callback):
    """Saves which activations the first block's dropout zeroed, per rank."""

    def __init__(self, folder):
        self.folder, self.masks = folder, []

    def on_train_start(self, trainer, pl_module):
        drop = pl_module.model.blocks[0].drop
        drop.register_forward_hook(lambda mod, inp, out: self.masks.append(out.detach() == 0))

    def on_train_end(self, trainer, pl_module):
        torch.save(self.masks, self.folder / f"rank{trainer.global_rank}.pt")


def test_each_rank_draws_its_own_dropout_masks(tmp_path):
    warnings.filterwarnings("ignore")
    L.seed_everything(0, verbose=False)  # the same seed in every rank, as `fit` with `seed:` does
    settings = TrainSettings(model=MODEL, microbatch_size=1)
    same_length = [{"input_ids": list(range(1, 9)), "loss_mask": [1] * 8} for _ in range(4)]
    module = RwkvTrainingModule(ToyRWKV(dropout=0.5), settings, same_length, None)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=two_ranks(), max_steps=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        use_distributed_sampler=False, callbacks=[RecordDropout(tmp_path)],
    )
    trainer.fit(module)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(rank0) == len(rank1) > 0 and rank0[0].float().mean() > 0.2  # dropout was on
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1))
