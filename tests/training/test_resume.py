"""Resume continues exactly (optimizer, LR schedule, data position, dropout) from every checkpoint
fit writes, and `--resume auto` finds them wherever the ModelCheckpoint is configured."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from conftest import two_ranks
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


SCHEDULES = {"cosine": {}, "warmup": {"warmup_steps": 3},
             "epoch-period": {"lr_period_type": "epoch", "lr_period": 1, "lr_type": "linear"}}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One 7-step run per schedule, a checkpoint every step: both resume points of a schedule
    resume from the same run (each run costs a Lightning fit)."""
    runs: dict[str, tuple[Path, RwkvTrainingModule]] = {}

    def run(schedule: str) -> tuple[Path, RwkvTrainingModule]:
        if schedule not in runs:
            warnings.filterwarnings("ignore")
            root = tmp_path_factory.mktemp(f"full-{schedule}")
            L.seed_everything(0, verbose=False)
            full = make_module(model_over=SCHEDULES[schedule], dropout=0.1)
            make_trainer(root, 7).fit(full)
            runs[schedule] = root, full
        return runs[schedule]

    return run


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.slow
@pytest.mark.parametrize("step", [4, 3], ids=["mid-epoch", "last-batch"])
def test_resume_from_a_step_checkpoint_equals_uninterrupted(tmp_path, uninterrupted, schedule, step):
    # 5 rows, accumulate 2 -> 3 optimizer steps per epoch; step 4 is mid-epoch 2, step 3 ends epoch 1
    warnings.filterwarnings("ignore")
    over = SCHEDULES[schedule]
    root, full = uninterrupted(schedule)
    ckpt = root / "ckpt" / f"step={step}.ckpt"
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


@pytest.mark.slow
def test_two_rank_resume_continues_each_ranks_dropout_stream(tmp_path):
    warnings.filterwarnings("ignore")

    def run(root, max_steps, ckpt=None):
        L.seed_everything(0, verbose=False)
        settings = TrainSettings(model=MODEL, microbatch_size=1, accumulate_grad_batches=1)
        module = RwkvTrainingModule(ToyRWKV(dropout=0.2), settings, toy_rows(8), None)
        trainer = L.Trainer(
            accelerator="cpu", devices=2, max_steps=max_steps, default_root_dir=root,
            strategy=two_ranks(),
            logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, use_distributed_sampler=False, plugins=[atomic_checkpoint_io()],
            callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1,
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


def _steps(root: Path) -> list[tuple[float, float]]:
    """(train/loss, train/tokens) per optimizer step, over every run logged under ``root``."""
    import csv

    rows = []
    for f in sorted(root.glob("logs/version_*/metrics.csv")):
        with f.open() as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("train/loss")]
    return [(float(r["train/loss"]), float(r["train/tokens"])) for r in rows]


@pytest.fixture(scope="module")
def default_checkpoint_project(tmp_path_factory):
    """A fit project with dropout whose dataset the first run builds and every later run reuses,
    and its uninterrupted runs, each made once: ``(folder, config text, full(end) -> run folder)``."""
    from fit_project import _setup, _tokenizer

    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    root = tmp_path_factory.mktemp("default_checkpoints")
    _tokenizer(root / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), root / "model.pth")
    text = _setup(root, max_steps=8).read_text()
    text = text.replace("  warmup_steps: 2\n", "  warmup_steps: 2\n  dropout: 0.1\n")
    fulls: dict[str, Path] = {}

    def full(end: str) -> Path:
        """The uninterrupted run to ``end`` (run in the project folder, the cwd of the caller)."""
        if end not in fulls:
            name = f"full{len(fulls)}"
            (root / f"{name}.yaml").write_text(text.replace("max_steps: 8", end))
            run_fit(root / f"{name}.yaml", log=lambda m: None)
            fulls[end] = root / "runs" / name
        return fulls[end]

    return root, text, full


@pytest.mark.parametrize(
    "end, steps, last_batches",
    [("max_steps: 8", 8, 4), ("max_steps: -1\n  max_epochs: 2", 12, 12)],
    ids=["to-max-steps", "to-max-epochs"],
)
@pytest.mark.slow
@pytest.mark.parametrize("stop", [4, 6], ids=["mid-epoch", "epoch-end"])
def test_resume_from_default_checkpoints_equals_uninterrupted(offline_data, monkeypatch, default_checkpoint_project,
                                                              stop, end, steps, last_batches):
    """Without every_n_train_steps, the checkpoint is written at the epoch end, also when
    max_steps stops training inside an epoch; resuming it neither replays nor skips data."""
    from rwkv_plug.training.fit import run_fit

    root, text, full_run = default_checkpoint_project
    monkeypatch.chdir(root)
    # 6 optimizer steps per epoch; warmup then a constant LR: the schedule does not depend on the run's length
    name = f"cut{stop}-{steps}"
    cut = root / f"{name}.yaml"
    cut.write_text(text.replace("max_steps: 8", f"max_steps: {stop}"))
    run_fit(cut, log=lambda m: None)
    cut.write_text(text.replace("max_steps: 8", end))
    out: list[str] = []
    run_fit(cut, resume="auto", log=out.append)
    assert f"resume auto: continuing from runs/{name}/checkpoints/last.ckpt" in out, out

    full_folder, cut_folder = full_run(end), root / "runs" / name
    full, cut = _steps(full_folder), _steps(cut_folder)
    assert len(full) == len(cut) == steps
    assert [t for _, t in cut] == [t for _, t in full]  # tokens seen, step by step
    assert [l for l, _ in cut] == pytest.approx([l for l, _ in full], rel=0, abs=1e-6)
    a, b = (torch.load(f / "checkpoints" / "last.ckpt", weights_only=True) for f in (full_folder, cut_folder))
    assert a["global_step"] == b["global_step"] == steps
    assert a["rwkv_plug"]["epoch"] == b["rwkv_plug"]["epoch"] == 1
    assert a["rwkv_plug"]["epoch_batches"] == b["rwkv_plug"]["epoch_batches"] == last_batches  # accumulate 2
    assert a["rwkv_plug"]["tokens"] == b["rwkv_plug"]["tokens"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


@pytest.mark.parametrize(
    "init_args, folder",
    [({"dirpath": "ck2", "save_top_k": -1}, "ck2"), ({}, "runs/cfg/logs/version_{}/checkpoints")],
    ids=["dirpath", "lightning-default"],
)
@pytest.mark.slow
def test_resume_auto_finds_a_model_checkpoint_given_in_callbacks(tmp_path, offline_data, init_args, folder):
    """The earlier trainer's form: a ModelCheckpoint in trainer.callbacks, not trainer.checkpoint.
    Without a dirpath Lightning writes under the logger's version folder, new for every run."""
    import yaml
    from fit_project import _setup, _tokenizer

    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    cfg = _setup(tmp_path, max_steps=2)
    raw = yaml.safe_load(cfg.read_text())
    raw["trainer"]["callbacks"] = [{"class_path": "ModelCheckpoint", "init_args": init_args}]
    cfg.write_text(yaml.safe_dump(raw))
    out: list[str] = []
    run_fit(cfg, log=out.append)
    first = folder.format(0)
    assert f"checkpoints: {first}" in out, out
    saved = sorted((tmp_path / first).glob("*.ckpt"))
    assert [p.name for p in saved] == ["epoch=0-step=2.ckpt"]

    cfg.write_text(cfg.read_text().replace("max_steps: 2", "max_steps: 3"))
    out.clear()
    run_fit(cfg, resume="auto", log=out.append)
    assert f"resume auto: continuing from {first}/epoch=0-step=2.ckpt" in out, out
    assert f"checkpoints: {folder.format(1)}" in out, out
    assert torch.load(next((tmp_path / folder.format(1)).glob("*step=3.ckpt")), weights_only=True)["global_step"] == 3


@pytest.mark.slow
def test_resuming_inside_an_epoch_with_another_microbatch_size_is_refused(tmp_path, offline_data):
    from fit_project import _setup, _tokenizer

    from rwkv_plug.core.errors import TrainingError
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    text = _setup(tmp_path, max_steps=4).read_text()  # 6 optimizer steps an epoch: stops inside it
    (tmp_path / "cut.yaml").write_text(text)
    run_fit(tmp_path / "cut.yaml", log=lambda m: None)
    (tmp_path / "cut.yaml").write_text(text.replace("max_steps: 4", "max_steps: 8").replace(
        "microbatch_size: 2", "microbatch_size: 1"))
    with pytest.raises(TrainingError, match=r"stopped inside an epoch with microbatch_size 2 on 1 rank\(s\), but "
                                            r"this run has microbatch_size 1 on 1"):
        run_fit(tmp_path / "cut.yaml", resume="auto", log=lambda m: None)
    # a checkpoint at an epoch end resumes with any batch layout
    (tmp_path / "epoch.yaml").write_text(text.replace("max_steps: 4", "max_steps: 6"))
    run_fit(tmp_path / "epoch.yaml", log=lambda m: None)
    (tmp_path / "epoch.yaml").write_text(text.replace("max_steps: 4", "max_steps: 8").replace(
        "microbatch_size: 2", "microbatch_size: 1"))
    run_fit(tmp_path / "epoch.yaml", resume="auto", log=lambda m: None)
    assert torch.load(tmp_path / "runs" / "epoch" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8


@pytest.mark.slow
def test_fit_says_when_the_last_steps_are_not_in_a_checkpoint(tmp_path, offline_data):
    from fit_project import _setup, _tokenizer

    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    text = _setup(tmp_path, max_steps=5).read_text()
    (tmp_path / "odd.yaml").write_text(text.replace("trainer:\n", "trainer:\n  checkpoint: {every_n_train_steps: 2}\n"))
    out: list[str] = []
    run_fit(tmp_path / "odd.yaml", log=out.append)
    assert any(line.startswith("note: the newest checkpoint, ") and "holds step 4 of the 5 trained; the last 1 "
               "are not saved" in line for line in out), out
    out.clear()
    (tmp_path / "even.yaml").write_text(text.replace("trainer:\n", "trainer:\n  checkpoint: {every_n_train_steps: 5}\n"))
    run_fit(tmp_path / "even.yaml", log=out.append)
    assert not [line for line in out if line.startswith("note:")], out


@pytest.mark.slow
def test_resuming_a_run_that_reached_max_steps_says_there_is_nothing_to_train(tmp_path, offline_data):
    from fit_project import _setup, _tokenizer

    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    cfg = _setup(tmp_path, max_steps=2)
    run_fit(cfg, log=lambda m: None)
    logs = sorted((tmp_path / "runs" / "cfg" / "logs").iterdir())
    out: list[str] = []
    run_fit(cfg, resume="auto", log=out.append)
    assert any(line.startswith("nothing to train: ") and "is at step 2 and trainer.max_steps is 2" in line
               for line in out), out
    assert sorted((tmp_path / "runs" / "cfg" / "logs").iterdir()) == logs  # no empty log version


class Killed(Exception):
    """A process killed mid-run: nothing after it runs, what was saved stays."""


class KillAtBatch(L.Callback):
    """Dies when the ``n``-th microbatch of this run starts."""

    def __init__(self, n: int):
        self.n, self.started = n, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.started += 1
        if self.started == self.n:
            raise Killed


def _optimizer_state(trainer) -> dict:
    return trainer.optimizers[0].state_dict()["state"]


def test_two_kills_with_accumulation_and_step_checkpoints_resume_bitwise(tmp_path):
    """Accumulation 2, a checkpoint every 2 steps. Killed mid-step 3, resumed from step 2, and
    killed again right after the first resumed microbatch (still at step 2, mid-accumulation):
    that microbatch must not have saved over step 2. The final weights and optimizer state
    equal an uninterrupted run's bit for bit."""
    warnings.filterwarnings("ignore")

    def trainer(root, kill=None):
        t = make_trainer(root, 6, accumulate=2, ckpt_every=2)
        t.checkpoint_callback.save_last = True
        if kill is not None:
            t.callbacks.insert(0, KillAtBatch(kill))
        return t

    def module():  # 8 rows: 4 optimizer steps an epoch
        settings = TrainSettings(model=MODEL, microbatch_size=1, accumulate_grad_batches=2, shuffle=True, seed=7)
        return RwkvTrainingModule(ToyRWKV(dropout=0.1), settings, toy_rows(8), None)

    L.seed_everything(0, verbose=False)
    full = module()
    uninterrupted = trainer(tmp_path / "a")
    uninterrupted.fit(full)

    root = tmp_path / "b"
    # run 1: steps 1-2 (batches 1-4, step=2 saved), batch 5 (half of step 3), killed as batch 6 starts
    # run 2: resumes at step 2, trains batch 5 again, killed as the next one starts
    for kill in (6, 2):
        L.seed_everything(0, verbose=False)
        ckpt = find_resume("auto", root / "ckpt", log=lambda m: None)
        with pytest.raises(Killed):
            trainer(root, kill).fit(module(), ckpt_path=ckpt, weights_only=True)
    newest = find_resume("auto", root / "ckpt", log=lambda m: None)
    assert torch.load(newest, weights_only=True)["rwkv_plug"]["epoch_batches"] == 4  # step 2's position, not 5
    L.seed_everything(0, verbose=False)
    resumed = module()
    last = trainer(root)
    last.fit(resumed, ckpt_path=newest, weights_only=True)

    assert last.global_step == uninterrupted.global_step == 6
    a, b = params(full), params(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = _optimizer_state(uninterrupted), _optimizer_state(last)
    assert sa.keys() == sb.keys()
    for i in sa:
        for name, value in sa[i].items():
            assert torch.equal(value, sb[i][name]), (i, name)
