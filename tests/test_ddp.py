"""Two CPU ranks over gloo: no hang with uneven chunk counts, same result as one process."""

from __future__ import annotations

import warnings

import lightning as L
import torch

from rwkv_plug.training.module import RwkvTrainingModule, TrainSettings
from rwkv_plug.training.testing import ToyRWKV

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


def train(devices: int, accumulate: int):
    L.seed_everything(0, verbose=False)
    settings = TrainSettings(model=MODEL, microbatch_size=1, accumulate_grad_batches=accumulate)
    module = RwkvTrainingModule(ToyRWKV(), settings, rows(), None)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
        max_steps=3, accumulate_grad_batches=accumulate, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        limit_val_batches=0, use_distributed_sampler=False,
    )
    trainer.fit(module)
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_two_ranks_equal_one_process_with_the_same_global_batch():
    warnings.filterwarnings("ignore")
    single = train(devices=1, accumulate=2)
    double = train(devices=2, accumulate=1)  # ranks get rows 0,2,4.. and 1,3,5..
    before = ToyRWKV().state_dict()
    for k in single:
        assert not torch.equal(single[k], before[k]) or k.endswith("bias"), k  # it trained
        assert torch.allclose(single[k], double[k], rtol=0, atol=1e-5), k


def validate(devices: int, val_rows: list) -> float:
    settings = TrainSettings(model=MODEL, microbatch_size=1)
    module = RwkvTrainingModule(ToyRWKV(), settings, rows(), val_rows)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", logger=False,
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
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        use_distributed_sampler=False, callbacks=[RecordDropout(tmp_path)],
    )
    trainer.fit(module)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(rank0) == len(rank1) > 0 and rank0[0].float().mean() > 0.2  # dropout was on
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1))
