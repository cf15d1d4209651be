"""LoRA through peft (model.tuning: lora): targets, frozen weights, merged export (ours and the rwkv
pip package), adapter folders in the peft format, starting fit from an adapter, resume; and the
tuning keys of the config."""

from __future__ import annotations

import textwrap
import warnings

import lightning as L
import pytest
import torch

from fit_project import perturbed_state_dict as base_sd
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.models import load_model
from rwkv_plug.models.init import init_state_dict
from rwkv_plug.models.io import save_state_dict
from rwkv_plug.training.tuning import apply_tuning, slim_checkpoint

LORA = {"tuning": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": None,
        "lora_adapter": None, "lora_options": {}}


def lora_model(sd, over=None, randomize=True):
    model = load_model(sd, kernel="torch")
    apply_tuning(model, {**LORA, **(over or {})}, log=lambda _: None)
    if randomize:  # B starts at zero (the adapter is a no-op); make it do something
        g = torch.Generator().manual_seed(9)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens]))[0][0]


def tuned_checkpoint(model, m, path):
    """A checkpoint as a tuned run writes it (Lightning's state dict, slimmed by the module's hook)."""
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "rwkv_plug": {},
            "pytorch-lightning_version": "2", "global_step": 1}
    slim_checkpoint(ckpt, model, m)
    torch.save(ckpt, path)
    return ckpt


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["rwkv5", "rwkv7"])
def test_default_targets_are_the_blocks_projections_and_only_adapters_train(arch):
    model = lora_model(base_sd(arch), randomize=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    wrapped = {n.rsplit(".lora_", 1)[0] for n in trainable}
    expect = {"rwkv5": {"att.receptance", "att.key", "att.value", "att.output", "att.gate",
                        "ffn.key", "ffn.receptance", "ffn.value"},
              "rwkv7": {"att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value"}}[arch]
    assert wrapped == {f"blocks.{i}.{e}" for i in range(2) for e in expect}
    # a fresh adapter changes nothing yet (peft starts B at zero)
    tokens = [1, 5, 9, 2]
    assert torch.equal(logits(model, tokens), logits(load_model(base_sd(arch), kernel="torch"), tokens))


def test_lora_options_reach_peft_and_a_dora_adapter_merges_too(tmp_path):
    from rwkv_plug.models.export import export_checkpoint

    sd = base_sd()
    base = save_state_dict(sd, tmp_path / "base.pth")
    over = {"lora_options": {"use_dora": True}, "lora_target_modules": ["key", "value"]}
    model = lora_model(sd, over)
    assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)
    tuned_checkpoint(model, {**LORA, **over, "load_model": str(base)}, tmp_path / "last.ckpt")
    _, out, _ = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "merged.pth", "fp32", merge=True)
    tokens = [2, 7, 1, 8, 28]
    assert torch.allclose(logits(load_model(out, kernel="torch"), tokens), logits(model, tokens), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="model.lora_options: peft's LoraConfig refused them: .*use_dorra"):
        lora_model(sd, {"lora_options": {"use_dorra": True}})


def test_a_target_that_does_not_exist_is_named_with_the_available_ones():
    with pytest.raises(ConfigError) as err:
        lora_model(base_sd(), {"lora_target_modules": ["key", "keyy"]})
    assert str(err.value) == (
        "model.lora_target_modules: 'keyy' is not a linear layer of this rwkv5 model; available: gate, head, "
        "key, output, receptance, value (or one block part: att.gate, att.key, att.output, att.receptance, "
        "att.value, ffn.key, ffn.receptance, ffn.value)")
    model = lora_model(base_sd(), {"lora_target_modules": ["att.key", "head"]}, randomize=False)
    assert sorted({n.rsplit(".lora_", 1)[0] for n, p in model.named_parameters() if p.requires_grad}) == [
        "blocks.0.att.key", "blocks.1.att.key", "head"]


@pytest.mark.parametrize("arch", ["rwkv5", "rwkv7"])
def test_merged_export_has_official_keys_and_the_adapted_logits(arch, tmp_path):
    from rwkv_plug.models.export import export_checkpoint

    sd = base_sd(arch)
    base = save_state_dict(sd, tmp_path / "base.pth")
    model = lora_model(sd)
    ckpt = tuned_checkpoint(model, {**LORA, "load_model": str(base)}, tmp_path / "last.ckpt")
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])  # no base weights
    _, out, dims = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "merged.pth", "fp32", merge=True)
    assert dims["kind"] == "merged model"
    merged = torch.load(out, weights_only=True)
    assert set(merged) == set(sd)  # the official keys, nothing of peft's
    tokens = [3, 17, 42, 8, 1, 60]
    adapted, plain = logits(model, tokens), logits(load_model(sd, kernel="torch"), tokens)
    assert (adapted - plain).abs().max() > 1e-2  # the adapter matters
    assert torch.allclose(logits(load_model(out, kernel="torch"), tokens), adapted, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_merged_rwkv5_export_loads_in_the_rwkv_pip_package(tmp_path, monkeypatch):
    from rwkv_plug.models.export import export_checkpoint

    sd = base_sd(n_embd=128, vocab=1000)
    base = save_state_dict(sd, tmp_path / "base.pth")
    model = lora_model(sd)
    tuned_checkpoint(model, {**LORA, "load_model": str(base)}, tmp_path / "last.ckpt")
    _, out, _ = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "merged.pth", "fp32", merge=True)
    tokens = torch.randint(0, 1000, (19,), generator=torch.Generator().manual_seed(0)).tolist()
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV

    theirs, _ = RWKV(str(out), strategy="cpu fp32").forward(tokens, None, full_output=True)
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0][0]
    assert torch.allclose(ours, theirs, atol=1e-3, rtol=0)


def test_adapter_folder_is_peft_format_and_fit_can_start_from_it(tmp_path):
    from peft import PeftModel

    from rwkv_plug.core.cli import main

    sd = base_sd()
    base = save_state_dict(sd, tmp_path / "base.pth")
    model = lora_model(sd, {"lora_dropout": 0.05, "lora_target_modules": ["key", "value", "output"]})
    tuned_checkpoint(model, {**LORA, "load_model": str(base)}, tmp_path / "last.ckpt")
    main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "adapter")])
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    tokens = [4, 8, 15, 16, 23, 42]
    want = logits(model, tokens)
    # peft itself reads the folder onto our plain model
    peft_model = PeftModel.from_pretrained(load_model(base, kernel="torch"), str(tmp_path / "adapter")).eval()
    assert torch.allclose(logits(peft_model, tokens), want, rtol=0, atol=1e-6)
    # and fit starts from base + adapter: same outputs, the adapter trains, its settings are kept
    again = load_model(base, kernel="torch")
    apply_tuning(again, {**LORA, "lora_adapter": str(tmp_path / "adapter")}, log=lambda _: None)
    assert torch.allclose(logits(again.eval(), tokens), want, rtol=0, atol=1e-6)
    assert again.peft_config["default"].lora_dropout == 0.05
    assert {n for n, p in again.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad}


def test_an_adapter_of_another_model_is_refused_in_one_line(tmp_path):
    from rwkv_plug.core.errors import ModelError
    from rwkv_plug.models.lora import save_adapter

    save_adapter(lora_model(base_sd(), {"lora_target_modules": ["key"]}), tmp_path / "a")
    bigger = load_model(init_state_dict(3, 64, 64, seed=0, dtype=torch.float32), kernel="torch")
    with pytest.raises(ModelError, match=r"does not fit this model: it lacks blocks\.2\.att\.key\.lora_A\.weight"):
        apply_tuning(bigger, {**LORA, "lora_adapter": str(tmp_path / "a")}, log=lambda _: None)
    with pytest.raises(ModelError, match="is not a LoRA adapter folder"):
        apply_tuning(bigger, {**LORA, "lora_adapter": str(tmp_path)}, log=lambda _: None)


@pytest.mark.slow
def test_a_lora_run_trains_only_adapters_saves_only_them_and_resumes_exactly(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from rwkv_plug.training.checkpoint import atomic_checkpoint_io, check_resume
    from rwkv_plug.training.module import RwkvTrainingModule, TrainSettings

    warnings.filterwarnings("ignore")
    base = save_state_dict(base_sd(), tmp_path / "base.pth")
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 64, (7,), generator=g).tolist(), "loss_mask": [1] * 7} for _ in range(8)]
    m = {"ctx_len": 3, "bptt_learning": True, "bptt_truncated_learning": False, "bptt_learning_range": -1,
         "lr_init": 1e-2, "lr_final": 1e-3, "lr_period": -1, "lr_period_type": "step", "lr_type": "cosine",
         "warmup_steps": -1, "weight_decay": 0.01, "layerwise_lr": True, "beta1": 0.9, "beta2": 0.99,
         "adam_eps": 1e-8, "consolidated_logging": True, **LORA, "lora_dropout": 0.1, "load_model": str(base)}

    def run(root, steps, ckpt=None):
        L.seed_everything(0, verbose=False)
        model = load_model(base, kernel="torch")
        apply_tuning(model, m, log=lambda _: None)
        module = RwkvTrainingModule(model, TrainSettings(model=m, microbatch_size=2, seed=1), rows, None)
        trainer = L.Trainer(
            accelerator="cpu", max_steps=steps, default_root_dir=root, logger=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
            callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1,
                                       filename="{step}")], plugins=[atomic_checkpoint_io()])
        trainer.fit(module, ckpt_path=ckpt, weights_only=True)
        return module

    whole = run(tmp_path / "a", 5)
    lora = {n: p for n, p in whole.model.named_parameters() if p.requires_grad}
    opt = whole.trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in lora.values()}
    assert {id(p) for p in opt.state} == {id(p) for p in lora.values()}
    base_now = {k: v for k, v in whole.model.state_dict().items() if ".lora_" not in k}
    fresh = load_model(base, kernel="torch")
    apply_tuning(fresh, m, log=lambda _: None)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in base_now.items())  # frozen
    ckpt = tmp_path / "a" / "ckpt" / "step=2.ckpt"
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert sorted(saved) == sorted(f"model.{n}" for n in lora)
    assert check_resume(str(ckpt), fresh) == 2  # the trainable part is what --resume checks

    resumed = run(tmp_path / "b", 5, str(ckpt))
    for n, p in resumed.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, lora[n]), n
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in lora.items() if ".lora_B." in n)  # it trained


# -- the config keys -------------------------------------------------------------------------
def test_tuning_keys_are_checked_all_at_once(tmp_path):
    from rwkv_plug.training.config import load_fit_config

    body = f"""
    trainer: {{max_steps: 1}}
    model:
      load_model: m.pth
      lr_init: 1e-3
      tuning: stat
      lora_r: 0
      lora_dropout: 1.5
      lora_target_modules: key
      lora_adapter: nowhere/
    data: {{data_path: {tmp_path}/d, source: x.txt}}
    """
    (tmp_path / "m.pth").write_bytes(b"x")
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(body))
    with pytest.raises(ConfigError) as err:
        load_fit_config(tmp_path / "cfg.yaml")
    msg = str(err.value)
    assert "model.tuning must be full, state, lora, got 'stat'. Did you mean 'state'?" in msg
    assert "model.lora_r must be >= 1, got 0" in msg
    assert "model.lora_dropout must be < 1, got 1.5" in msg
    assert "model.lora_target_modules must be a list of layer names" in msg
    assert "model.lora_adapter 'nowhere/' does not exist" in msg

    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(f"""
    model: {{load_model: m.pth, lr_init: 1e-3, tuning: full, lora_adapter: m.pth}}
    data: {{data_path: {tmp_path}/d, source: x.txt}}
    """))
    with pytest.raises(ConfigError, match=r"model.lora_adapter applies only with model.tuning: lora \(tuning is "
                                          r"full\)"):
        load_fit_config(tmp_path / "cfg.yaml")


def test_generate_with_an_adapter_folder_is_the_adapted_models_greedy_text(tmp_path, capsys):
    """`generate --adapter` runs the adapted model in eval mode (the adapter's dropout off)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rwkv_plug.core.cli import main
    from rwkv_plug.data.tokenizer import load_tokenizer
    from rwkv_plug.models.lora import save_adapter
    from rwkv_plug.models.sampling import generate

    words = "the cat sat on a mat and dog ran to see bird".split()
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(tmp_path / "tok"))
    sd = base_sd(vocab=len(words) + 1)
    base = save_state_dict(sd, tmp_path / "base.pth")
    model = lora_model(sd, {"lora_dropout": 0.5})
    save_adapter(model, tmp_path / "adapter")
    prompt = "the cat sat"
    ids = load_tokenizer(str(tmp_path / "tok"), {}).encode(prompt)
    want = generate(model, ids, 6, temperature=0)
    assert want != generate(load_model(base, kernel="torch").eval(), ids, 6, temperature=0)
    main(["generate", str(base), "--prompt", prompt, "--tokenizer", str(tmp_path / "tok"), "--temperature", "0",
          "--max-tokens", "6", "--adapter", str(tmp_path / "adapter")])
    assert capsys.readouterr().out.split() == prompt.split() + [words[i - 1] if i else "[UNK]" for i in want]


def test_export_and_resume_refuse_a_base_model_file_with_other_weights(tmp_path):
    import shutil
    import types

    from rwkv_plug.core.errors import ModelError
    from rwkv_plug.models.export import export_checkpoint
    from rwkv_plug.training.module import RwkvTrainingModule

    sd = base_sd()
    base = save_state_dict(sd, tmp_path / "base.pth")
    ckpt = tuned_checkpoint(lora_model(sd), {**LORA, "load_model": str(base)}, tmp_path / "last.ckpt")
    assert ckpt["rwkv_plug"]["tuning"]["load_model_fingerprint"]["size"] == base.stat().st_size
    moved = shutil.copy(base, tmp_path / "moved.pth")  # the same bytes elsewhere: fine
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "a.pth", "fp32", merge=True, base=str(moved))
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}  # same shapes, other weights
    save_state_dict(other, tmp_path / "base.pth")
    with pytest.raises(ModelError, match=r"last\.ckpt': its base model file '.*base\.pth' has changed since it "
                                         r"was trained \(same size, other content\); name the base model"):
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "b.pth", "fp32", merge=True)
    module = types.SimpleNamespace(settings=types.SimpleNamespace(model=types.SimpleNamespace(load_model=str(base))))
    with pytest.raises(ConfigError, match=r"the checkpoint to resume: its base model file .* set model\.load_model"):
        RwkvTrainingModule.on_load_checkpoint(module, ckpt)
    module.settings.model.load_model = str(save_state_dict(base_sd(n_embd=128), tmp_path / "wide.pth"))
    with pytest.raises(ConfigError, match=r"it was trained on base model '.*base\.pth', and '.*wide\.pth' is "
                                          r"another file \([\d,]+ bytes there, [\d,]+ here\)"):
        RwkvTrainingModule.on_load_checkpoint(module, ckpt)
    from rwkv_plug.training.tuning import base_mismatch

    assert base_mismatch(ckpt["rwkv_plug"]["tuning"], moved) is None  # the same bytes elsewhere: resumes
