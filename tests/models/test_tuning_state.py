"""State tuning (model.tuning: state): exact gradients through chunks, frozen weights, the
state file in generate and in the rwkv pip package, checkpoints, resume and DDP."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from conftest import two_ranks
from fit_project import perturbed_state_dict
from rwkv_plug.core.errors import ConfigError, ModelError
from rwkv_plug.models import load_model
from rwkv_plug.models.io import save_state_dict
from rwkv_plug.models.state_tuning import STATE_KEY, load_state_file, state_file_tensors
from rwkv_plug.training.bptt import BpttSettings, sequence_loss
from rwkv_plug.training.checkpoint import atomic_checkpoint_io
from rwkv_plug.training.module import RwkvTrainingModule, TrainSettings
from rwkv_plug.training.tuning import apply_tuning

V = 32


def base_sd(arch="rwkv5", n_embd=64, vocab=V, seed=0):
    return perturbed_state_dict(arch, n_embd, vocab, seed)


def state_model(arch="rwkv5", dtype=torch.float32, seed=0):
    model = load_model(base_sd(arch, seed=seed), kernel="torch").to(dtype)
    apply_tuning(model, {"tuning": "state", "state_file": None}, log=lambda _: None)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.tuned_state.wkv:
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


def state_grads(model, ids, mask, settings):
    for p in model.tuned_state.wkv:
        p.grad = None
    sequence_loss(model, ids, mask, settings, train=True).loss.backward()
    return [p.grad.clone() for p in model.tuned_state.wkv]


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", ["rwkv5", "rwkv7"])
def test_state_gradient_of_a_multi_chunk_sample_equals_the_full_sequence_gradient(arch):
    model = state_model(arch, torch.float64)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (2, 23), generator=g)
    mask = torch.ones_like(ids)
    whole = state_grads(model, ids, mask, BpttSettings(ctx_len=64))  # one chunk: plain autograd
    chunked = state_grads(model, ids, mask, BpttSettings(ctx_len=5))  # 5 chunks, the last one short
    assert all(w.abs().max() > 1e-4 for w in whole)  # the state does get a gradient
    for w, c in zip(whole, chunked):
        assert rel(c, w) < 1e-10
    # no weight got a gradient: they are frozen
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("tuned_state."))


def _masked_ce_grad(model, ids, mask, upto, positions):
    """Gradient of the masked CE over target ``positions`` of one pass over ids[:, :upto+1],
    divided by every target of the sample (as sequence_loss does)."""
    for p in model.tuned_state.wkv:
        p.grad = None
    logits, _ = model(ids[:, :upto])
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:upto + 1], reduction="none")
    keep = torch.zeros_like(ce)
    keep[:, positions] = 1
    (ce * keep).sum().div(mask[:, 1:].sum()).backward()
    return [p.grad.clone() for p in model.tuned_state.wkv]


def test_state_gradient_with_learning_range_and_truncation():
    model = state_model("rwkv5", torch.float64)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V, (1, 21), generator=g)  # 20 targets: 4 chunks of 5
    mask = torch.ones_like(ids)
    # learning range 2: the exact gradient of the last 2 chunks' loss, through the earlier chunks
    ranged = state_grads(model, ids, mask, BpttSettings(ctx_len=5, learning_range=2, l2wrap=False))
    expect = _masked_ce_grad(model, ids, mask, 20, slice(10, 20))
    for r, e in zip(ranged, expect):
        assert rel(r, e) < 1e-10
    # truncated: the state only sees the first chunk's loss (the state is detached after it)
    cut = state_grads(model, ids, mask, BpttSettings(ctx_len=5, truncated=True, l2wrap=False))
    expect = _masked_ce_grad(model, ids, mask, 5, slice(0, 5))
    for c, e in zip(cut, expect):
        assert rel(c, e) < 1e-10


def test_an_architecture_that_does_not_declare_state_tuning_is_refused_by_name():
    from rwkv_plug.core import plugins
    from rwkv_plug.core.hookspecs import hookimpl
    from rwkv_plug.core.interfaces import ModelArch

    class Plain5(ModelArch):
        """A third-party architecture that keeps the default (full fine-tuning only)."""

        name = "plain5"

        @classmethod
        def detect(cls, state_dict):
            return False

        @classmethod
        def from_state_dict(cls, state_dict, **options):
            raise AssertionError("unused")

    class Plugin:
        @hookimpl
        def register_models(self):
            return [Plain5]

    plugins.current().register(Plugin(), name="plain5-plugin")
    model = load_model(base_sd(), kernel="torch")
    model.arch_name = "plain5"
    with pytest.raises(ConfigError) as err:
        apply_tuning(model, {"tuning": "state", "state_file": None}, log=lambda _: None)
    assert str(err.value) == ("model.tuning: the plain5 architecture does not support 'state' "
                              "(it supports: full)")


# -- the toy task: whatever the 3-word prompt, the answer starts with one fixed word -------------
WORDS = "the cat sat on a mat and dog ran to see bird fly over tree by river light".split()
ANSWER = WORDS.index("dog") + 1  # ids: 0 is [UNK]

MODEL = {
    "ctx_len": 2, "bptt_learning": True, "bptt_truncated_learning": False, "bptt_learning_range": -1,
    "lr_init": 0.3, "lr_final": 0.3, "lr_period": -1, "lr_period_type": "step", "lr_type": "cosine",
    "warmup_steps": -1, "weight_decay": 0.0, "layerwise_lr": True, "beta1": 0.9, "beta2": 0.99,
    "adam_eps": 1e-8, "consolidated_logging": True, "tuning": "state", "state_file": None,
}


def toy_rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(ANSWER + 1, len(WORDS) + 1, (n, 3), generator=g).tolist()
    return [{"input_ids": p + [ANSWER], "loss_mask": [0, 0, 0, 1]} for p in prompts]


def toy_module(path, rows, over=None):
    m = {**MODEL, "load_model": str(path), **(over or {})}
    model = load_model(path, kernel="torch")
    apply_tuning(model, m, log=lambda _: None)
    settings = TrainSettings(model=m, microbatch_size=4, accumulate_grad_batches=1, seed=3)
    return RwkvTrainingModule(model, settings, rows, None)


def toy_trainer(root: Path, max_steps: int, devices=1, every=None, accumulate=1):
    return L.Trainer(
        accelerator="cpu", devices=devices, strategy=two_ranks() if devices > 1 else "auto", max_steps=max_steps,
        accumulate_grad_batches=accumulate, default_root_dir=root, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every or max_steps, save_top_k=-1,
                                   filename="{step}")],
        plugins=[atomic_checkpoint_io()],
    )


def word_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))


@pytest.mark.slow
def test_a_tuned_state_makes_generate_answer_in_the_trained_format(tmp_path, capsys):
    from rwkv_plug.core.cli import main
    from rwkv_plug.models.export import export_checkpoint
    from rwkv_plug.models.sampling import feed, generate

    warnings.filterwarnings("ignore")
    base = save_state_dict(base_sd(n_embd=128), tmp_path / "base.pth")  # 2 heads learn it in 40 steps
    L.seed_everything(0, verbose=False)
    module = toy_module(base, toy_rows(64, seed=0))
    before = {k: v.clone() for k, v in module.model.state_dict().items() if not k.startswith("tuned_state.")}
    toy_trainer(tmp_path, 40).fit(module)

    # frozen means frozen: weights bit-identical, only the state in the optimizer and its state
    after = module.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    tuned = {id(p) for p in module.model.tuned_state.wkv}
    opt = module.trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == tuned
    assert {id(p) for p in opt.state} == tuned
    # the checkpoint holds the state, not a second copy of the base model
    ckpt = tmp_path / "ckpt" / "step=40.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert sorted(saved["state_dict"]) == ["model.tuned_state.wkv.0", "model.tuned_state.wkv.1"]
    assert saved["rwkv_plug"]["tuning"]["mode"] == "state"

    _, state_path, dims = export_checkpoint(ckpt, tmp_path / "state.pth")
    assert "state file" in dims["kind"]
    assert sorted(torch.load(state_path, weights_only=True)) == [STATE_KEY.format(0), STATE_KEY.format(1)]

    # generate's model (base + state file) gives the training module's logits
    prompts = [p["input_ids"][:3] for p in toy_rows(6, seed=99)]
    plain = load_model(base, kernel="torch").eval()
    with_state = load_model(base, kernel="torch").eval()
    load_state_file(with_state, state_path)
    module.model.eval()
    with torch.no_grad():
        for p in prompts:
            ours, _ = module.model(torch.tensor([p]))  # from the module's zero_state: its tuned state
            theirs, _ = feed(with_state, p)
            assert torch.allclose(ours[0, -1], theirs, rtol=0, atol=1e-6)
    tuned_first = [generate(with_state, p, 1, temperature=0)[0] for p in prompts]
    base_first = [generate(plain, p, 1, temperature=0)[0] for p in prompts]
    assert tuned_first == [ANSWER] * len(prompts)
    assert base_first.count(ANSWER) <= 1, base_first

    # and through the command line, with a word-level tokenizer
    word_tokenizer(tmp_path / "tok")
    prompt = " ".join(WORDS[i - 1] for i in prompts[0])
    args = ["generate", str(base), "--prompt", prompt, "--tokenizer", str(tmp_path / "tok"),
            "--temperature", "0", "--max-tokens", "1"]
    main([*args, "--state", str(state_path)])
    assert capsys.readouterr().out.split() == prompt.split() + ["dog"]
    main(args)
    assert base_first[0] != ANSWER
    assert capsys.readouterr().out.split()[len(prompt.split()):] != ["dog"]


def test_a_state_file_that_does_not_fit_the_model_is_one_clear_error(tmp_path):
    model = load_model(base_sd(), kernel="torch")
    torch.save({STATE_KEY.format(0): torch.zeros(1, 64, 64)}, tmp_path / "short.pth")
    with pytest.raises(ModelError, match=r"lacks for this model \(2 layers.*blocks\.1\.att\.time_state"):
        load_state_file(model, tmp_path / "short.pth")
    torch.save({"emb.weight": torch.zeros(2, 2)}, tmp_path / "model.pth")
    with pytest.raises(ModelError, match="is not a state file"):
        load_state_file(load_model(base_sd(), kernel="torch"), tmp_path / "model.pth")
    with pytest.raises(ModelError, match="state file '.*none.pth' does not exist"):
        load_state_file(load_model(base_sd(), kernel="torch"), tmp_path / "none.pth")


def test_export_merge_of_a_full_checkpoint_is_refused(tmp_path):
    from rwkv_plug.models.export import export_checkpoint

    torch.save({"state_dict": {f"model.{k}": v for k, v in base_sd().items()}}, tmp_path / "last.ckpt")
    with pytest.raises(ModelError, match="--merge applies to LoRA and state-tuning checkpoints; .* without --merge"):
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "x.pth", merge=True)


def tuned_checkpoint(model, base, path):
    """A checkpoint as a state-tuning run writes it (Lightning's state dict, slimmed by the module's hook)."""
    from rwkv_plug.training.tuning import slim_checkpoint

    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "rwkv_plug": {}}
    slim_checkpoint(ckpt, model, {"tuning": "state", "load_model": str(base)})
    torch.save(ckpt, path)


@pytest.mark.slow
def test_export_merge_writes_the_v5_model_with_att_time_state_that_the_rwkv_pip_package_runs(tmp_path, monkeypatch):
    """The rwkv package reads blocks.N.att.time_state from a v5.2 model file: `export --merge` of a
    state-tuning checkpoint writes the base model with them, and the package's logits are ours."""
    from rwkv_plug.models.export import export_checkpoint

    sd = base_sd(n_embd=128, vocab=1000)  # 2 heads: the package squeezes time_ tensors
    base = save_state_dict(sd, tmp_path / "base.pth")
    model = load_model(sd, kernel="torch")
    apply_tuning(model, {"tuning": "state", "state_file": None}, log=lambda _: None)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.tuned_state.wkv:
            p.copy_(torch.randn(p.shape, generator=g))
    tuned_checkpoint(model, base, tmp_path / "last.ckpt")
    _, path, dims = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "with_state.pth", "fp32", merge=True)
    assert dims["kind"] == "model with its tuned state (rwkv pip package form)"
    written = torch.load(path, weights_only=True)
    assert set(written) == set(sd) | {STATE_KEY.format(0), STATE_KEY.format(1)}
    assert all(torch.equal(written[k], v) for k, v in state_file_tensors(model).items())
    tokens = torch.randint(0, 1000, (17,), generator=g).tolist()
    with torch.no_grad():
        ours, _ = model(torch.tensor([tokens]))
        zero, _ = load_model(sd, kernel="torch")(torch.tensor([tokens]))
    assert (ours - zero).abs().max() > 0.1  # the state matters to the logits

    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV

    theirs, _ = RWKV(str(path), strategy="cpu fp32").forward(tokens, None, full_output=True)
    assert torch.allclose(ours[0], theirs, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_resume_of_a_state_tuning_run_continues_exactly(tmp_path):
    warnings.filterwarnings("ignore")
    base = save_state_dict(base_sd(), tmp_path / "base.pth")
    rows = toy_rows(12, seed=0)
    L.seed_everything(0, verbose=False)
    whole = toy_module(base, rows)
    toy_trainer(tmp_path / "a", 5, every=1).fit(whole)
    L.seed_everything(0, verbose=False)
    resumed = toy_module(base, rows)
    trainer = toy_trainer(tmp_path / "b", 5)
    trainer.fit(resumed, ckpt_path=str(tmp_path / "a" / "ckpt" / "step=2.ckpt"), weights_only=True)
    assert trainer.global_step == 5
    for a, b in zip(whole.model.tuned_state.wkv, resumed.model.tuned_state.wkv):
        assert torch.equal(a, b)
    assert not torch.equal(whole.model.tuned_state.wkv[0], torch.zeros_like(whole.model.tuned_state.wkv[0]))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["state", "lora"])
def test_two_ranks_train_the_same_tensors_as_one_process_with_the_same_global_batch(tmp_path, mode):
    warnings.filterwarnings("ignore")
    base = save_state_dict(base_sd(), tmp_path / "base.pth")
    rows = toy_rows(16, seed=0)
    over = {"ctx_len": 1, "lr_init": 0.05, "lr_final": 0.05}  # 3 chunks per sample
    if mode == "lora":
        over.update(tuning="lora", lora_r=2, lora_alpha=4, lora_dropout=0.0, lora_adapter=None, lora_options={},
                    lora_target_modules=["att.key", "att.value"], lr_init=1e-2, lr_final=1e-2)
    results = []
    for devices, accumulate in ((1, 2), (2, 1)):
        L.seed_everything(0, verbose=False)
        module = toy_module(base, rows, over)
        module.settings.accumulate_grad_batches = accumulate
        root = tmp_path / f"run{devices}"
        toy_trainer(root, 3, devices=devices, accumulate=accumulate).fit(module)
        saved = torch.load(root / "ckpt" / "step=3.ckpt", weights_only=True)["state_dict"]  # from rank 0
        results.append(saved)
    one, two = results
    if mode == "state":
        assert sorted(one) == sorted(two) == ["model.tuned_state.wkv.0", "model.tuned_state.wkv.1"]
    else:
        assert sorted(one) == sorted(two) and len(one) == 8 and all(".lora_" in k for k in one)
    for k in one:
        assert one[k].abs().max() > 1e-3
        # fp32 rounding differs between one process and two ranks (and with the chunked head's
        # summation order); Adam's per-element normalisation carries it to ~1e-6 over three steps.
        # Training on half the rows (a rank's share lost) moves them by ~0.3.
        diff = (one[k] - two[k]).abs().max().item()
        assert diff < 1e-5, (k, diff)
    if mode == "lora":  # B starts at zero: it moved, and the same way on both
        assert all(one[k].abs().max() > 1e-3 for k in one if ".lora_B." in k)


def test_export_merge_of_an_rwkv7_state_says_the_pip_package_cannot_read_it(tmp_path):
    from rwkv_plug.models.export import export_checkpoint

    base = save_state_dict(base_sd("rwkv7"), tmp_path / "base.pth")
    tuned_checkpoint(state_model("rwkv7"), base, tmp_path / "last.ckpt")
    with pytest.raises(ModelError, match="the rwkv pip package does not read a tuned state from a rwkv7 model file"):
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "x.pth", merge=True)
    _, path, _ = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "state.pth")
    model = load_model(base, kernel="torch")
    load_state_file(model, path)  # rwkv7's [value, key] state round-trips through the file
    for a, b in zip(model.tuned_state.wkv, state_model("rwkv7").tuned_state.wkv):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["state", "lora"])
def test_fit_with_a_tuning_mode_prints_the_counts_resumes_and_exports(tmp_path, monkeypatch, mode):
    """The config keys reach fit: it says what trains, --resume auto accepts its slim checkpoint,
    and export turns that into a state file or (with --merge) a merged model."""
    import textwrap

    from rwkv_plug.core.cli import main
    from rwkv_plug.training.fit import run_fit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    word_tokenizer(tmp_path / "tok")
    save_state_dict(base_sd(), tmp_path / "model.pth")
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (9,), generator=g)) for _ in range(24)]
    (tmp_path / "data.txt").write_text("\n".join(lines) + "\n")
    lora = "tuning: lora\n  lora_r: 4\n  lora_target_modules: [att.key, att.value]"
    extra = "tuning: state" if mode == "state" else lora
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(textwrap.dedent("""
        trainer: {max_steps: 2, microbatch_size: 2, enable_progress_bar: false}
        model:
          load_model: model.pth
          ctx_len: 4
          lr_init: 1e-2
          EXTRA
        data: {data_path: datapath/, source: data.txt, tokenizer: tok, test_split: 2, text_rechunk_size: 12}
    """).replace("EXTRA", extra))
    out: list[str] = []
    run_fit(cfg, log=out.append)
    total = sum(v.numel() for v in base_sd().values())
    trained = 2 * 64 * 64 if mode == "state" else 2 * 2 * (4 * 64 + 64 * 4)  # layers x (state | 2 x (A + B))
    assert f"tuning: {mode}: {trained:,} of {total + trained:,} parameters train" in "\n".join(out)
    cfg.write_text(cfg.read_text().replace("max_steps: 2", "max_steps: 3"))
    out.clear()
    run_fit(cfg, resume="auto", log=out.append)
    assert "resume auto: continuing from" in "\n".join(out)
    last = tmp_path / "runs" / "cfg" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    if mode == "state":
        main(["export", str(last), "state.pth"])
        load_state_file(load_model("model.pth", kernel="torch"), "state.pth")
    else:
        main(["export", str(last), "merged.pth", "--merge", "--dtype", "fp32"])
        assert set(torch.load("merged.pth", weights_only=True)) == set(base_sd())


def test_a_full_rwkv7_run_checkpoints_every_tensor_though_some_are_frozen():
    """rwkv7's unused block-0 v0/v1/v2 are frozen in a full run: its checkpoint must still hold the
    whole model (export needs it), and it records no tuning."""
    from rwkv_plug.training.tuning import slim_checkpoint

    model = load_model(base_sd("rwkv7"), kernel="torch")
    apply_tuning(model, {"tuning": "full"}, log=lambda _: None)
    assert any(not p.requires_grad for p in model.parameters())
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "rwkv_plug": {}}
    slim_checkpoint(ckpt, model, {"tuning": "full", "load_model": "m.pth"})
    assert len(ckpt["state_dict"]) == len(model.state_dict()) and "tuning" not in ckpt["rwkv_plug"]
