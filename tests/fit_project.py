"""A tiny word-level fit project (16-id HF tokenizer, a 2-layer model, text data) that
the fit, resume, report, progress, override and evaluation tests build in a tmp folder."""

from __future__ import annotations

import csv
import random
import textwrap
from pathlib import Path


WORDS = "the cat sat on a mat and dog ran to park with red ball".split()


def _tokenizer(folder: Path) -> int:
    """A tiny word-level HF tokenizer (keeps the model small and the test fast)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>").save_pretrained(folder)
    return len(vocab)


def _setup(tmp_path: Path, max_steps: int) -> Path:
    random.seed(0)
    words = WORDS
    lines = [" ".join(random.choice(words) for _ in range(12)) for _ in range(160)]
    (tmp_path / "data.txt").write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(textwrap.dedent(f"""
        trainer:
          max_steps: {max_steps}
          target_batch_size: 4
          microbatch_size: 2
          enable_progress_bar: false
          enable_model_summary: false
        model:
          load_model: model.pth
          ctx_len: 32
          lr_init: 1e-2
          warmup_steps: 2
        data:
          data_path: datapath/
          source: data.txt
          tokenizer: tok
          text_rechunk_size: 72
          test_split: 2
    """))
    return cfg


def _losses(root: Path) -> list[float]:
    rows = []
    for f in sorted(root.glob("logs/version_*/metrics.csv")):
        with f.open() as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in rows]


def _project(tmp_path: Path, vocab: int = 64, max_steps: int = 1) -> Path:
    """The tiny word-level project of test_fit (16 ids) with a model of ``vocab`` rows."""
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, vocab, seed=0), tmp_path / "model.pth")
    return _setup(tmp_path, max_steps=max_steps)


def _with(cfg: Path, section: str, *lines: str) -> Path:
    """Add ``lines`` (already indented) under ``section:``."""
    text = cfg.read_text().replace(f"{section}:\n", f"{section}:\n" + "".join(f"{l}\n" for l in lines), 1)
    cfg.write_text(text)
    return cfg


def _error_lines(res) -> list[str]:
    return [l for l in res.stderr.splitlines() if l.startswith("error:")]


def small_config(folder: Path, model: str = "lr_init: 1e-4", trainer: str | None = None) -> Path:
    """``folder/cfg.yaml`` with the fewest keys fit takes, for tests of config loading.

    model: ``load_model: m.pth`` (a file of one byte: loading the config only sees that it
    exists) then the inline keys ``model``; data: ``folder/d`` built from ``x.txt``, which
    loading never reads; trainer: the inline keys ``trainer`` when given.
    """
    (folder / "m.pth").write_bytes(b"x")
    cfg = folder / "cfg.yaml"
    cfg.write_text((f"trainer: {{{trainer}}}\n" if trainer is not None else "")
                   + f"model: {{load_model: m.pth, {model}}}\n"
                   + f"data: {{data_path: {folder}/d, source: x.txt}}\n")
    return cfg


def perturbed_state_dict(arch: str = "rwkv5", n_embd: int = 64, vocab: int = 64, seed: int = 0) -> dict:
    """A trained-looking 2-layer model: our init with every tensor perturbed (zero-init outputs
    would hide adapters and tuned states from the logits)."""
    import torch

    if arch == "rwkv5":
        from rwkv_plug.models.init import init_state_dict

        sd = init_state_dict(2, n_embd, vocab, seed=seed, dtype=torch.float32)
    else:
        from rwkv_plug.models.arch7 import RWKV7Arch

        sd = {k: v.float() for k, v in RWKV7Arch.init_state_dict(2, n_embd, vocab, seed=seed).items()}
    g = torch.Generator().manual_seed(seed + 1)
    return {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
