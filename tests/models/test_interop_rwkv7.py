"""RWKV-7 files and math against the independent ``rwkv`` pip package (cpu fp32).

The package reads RWKV_V7_ON at import, so it runs in a fresh interpreter
(the v5 interop test imports it in-process with v7 off). The package
computes the decay with 0.606531 for e^-0.5; we use the exact constant,
a difference far below the 1e-4 tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rwkv_plug.models import load_model
from rwkv_plug.models.export import export_checkpoint
from rwkv_plug.models.init7 import init_state_dict
from rwkv_plug.models.sampling import generate

from fit_project import WORDS, _tokenizer as _word_tokenizer

pytestmark = pytest.mark.slow  # every test here takes seconds: fit runs, subprocesses or the Triton interpreter

#: Runs in a subprocess: loads MODEL.pth in the rwkv package and answers a JSON request.
PIP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="0", RWKV_CUDA_ON="0")
    import torch
    torch.set_num_threads(1)
    from rwkv.model import RWKV

    req = json.loads(open(sys.argv[1]).read())
    model = RWKV(req["model"], "cpu fp32")
    out = {}
    if "tokens" in req:
        logits, _ = model.forward(list(req["tokens"]), None, full_output=True)
        out["logits"] = logits.float()
        state, pieces = None, []
        for piece in req["pieces"]:
            got, state = model.forward(list(piece), state, full_output=True)
            state = [s.clone() for s in state]
            pieces.append(got.float().view(len(piece), -1))  # one token gives a (V,) vector
        out["pieces"] = torch.cat(pieces)
        out["state"] = [s.clone() for s in state]
    if "prompt" in req:
        logits, state = model.forward(list(req["prompt"]), None)
        greedy = []
        for _ in range(req["max_tokens"]):
            token = int(torch.argmax(logits))
            greedy.append(token)
            logits, state = model.forward([token], state)
        out["greedy"] = greedy
    torch.save(out, req["out"])
""")


def pip_rwkv7(tmp_path: Path, model: Path, **request) -> dict:
    """Ask the rwkv pip package (v7 on, cpu fp32) about ``model`` (a .pth path)."""
    req = {"model": str(model.with_suffix("")), "out": str(tmp_path / "pip_out.pt"), **request}
    (tmp_path / "pip_req.json").write_text(json.dumps(req))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
    res = subprocess.run([sys.executable, "-c", PIP_SCRIPT, str(tmp_path / "pip_req.json")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(tmp_path / "pip_out.pt", weights_only=True)


def _trained_like(sd: dict, seed: int) -> dict:
    """Every tensor nudged, as a few training steps would (nothing stays at a symmetric init)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in sd.items()}


def _our_logits(path: Path, tokens: list[int], pieces: list[list[int]]):
    model = load_model(path).eval()
    with torch.no_grad():
        whole, _ = model(torch.tensor([tokens]))
        state, parts = None, []
        for piece in pieces:
            got, state = model(torch.tensor([piece]), state)
            parts.append(got[0])
    return model, whole[0], torch.cat(parts), state


@pytest.mark.slow
@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "trained"])
def test_exported_x070_file_matches_the_rwkv_package(tmp_path, trained):
    V = 300
    sd = init_state_dict(2, 128, V, seed=0, dtype=torch.float32)
    if trained:
        sd = _trained_like(sd, 1)
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "last.ckpt")
    _, path, dims = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "model.pth", "fp32")
    assert dims["arch"] == "rwkv7"

    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, V, (200,), generator=g).tolist()
    pieces = [tokens[:70], tokens[70:71], tokens[71:]]
    theirs = pip_rwkv7(tmp_path, path, tokens=tokens, pieces=pieces, prompt=tokens[:20], max_tokens=8)
    model, whole, parts, state = _our_logits(path, tokens, pieces)

    assert theirs["logits"].shape == whole.shape == (200, V)
    assert whole.std() > 0.1  # a model whose logits say something
    assert (whole - theirs["logits"]).abs().max() < 1e-4
    # three pieces with carried state == one call, in both implementations
    assert (parts - whole).abs().max() < 1e-4
    assert (theirs["pieces"] - theirs["logits"]).abs().max() < 1e-4
    # the same state: per layer att shift (C), wkv [H, Nv, Nk], ffn shift (C)
    assert len(state) == len(theirs["state"]) == 6
    for ours_s, theirs_s in zip(state, theirs["state"]):
        assert (ours_s[0] - theirs_s).abs().max() < 1e-4
    # greedy generation gives the same tokens
    assert generate(model, tokens[:20], max_tokens=8, temperature=0) == theirs["greedy"]


@pytest.mark.slow
def test_init_fit_export_then_the_rwkv_package_generates_what_we_generate(tmp_path, cli, monkeypatch):
    import random

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _word_tokenizer(tmp_path / "tok")
    rnd = random.Random(0)
    (tmp_path / "data.txt").write_text(
        "\n".join(" ".join(rnd.choice(WORDS) for _ in range(12)) for _ in range(40)) + "\n")
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent("""
        trainer:
          max_steps: 3
          target_batch_size: 2
          microbatch_size: 1
          enable_progress_bar: false
          enable_model_summary: false
        model:
          load_model: model.pth
          ctx_len: 16
          lr_init: 3e-2
        data:
          data_path: datapath/
          source: data.txt
          tokenizer: tok
          text_rechunk_size: 40
          test_split: 0
    """))
    init = cli("init-model", "--arch", "rwkv7", "--n_layer", "2", "--n_embd", "64", "--vocab_size", "64",
               "--seed", "0", "model.pth", cwd=tmp_path)
    assert init.returncode == 0 and "RWKV-7 (x070) L2-D64, vocab 64" in init.stdout, init.stderr
    fit = cli("fit", "cfg.yaml")
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = next(tmp_path.glob("**/checkpoints/last.ckpt"))
    exp = cli("export", str(ckpt), "out.pth", "--dtype", "fp32")
    assert exp.returncode == 0 and "rwkv7 L2-D64" in exp.stdout, exp.stderr
    trained = torch.load(tmp_path / "out.pth", weights_only=True)
    init_sd = torch.load(tmp_path / "model.pth", weights_only=True)
    assert set(trained) == set(init_sd)
    assert not torch.equal(trained["head.weight"], init_sd["head.weight"].float())  # it did train

    prompt = "the cat sat on"
    ours = cli("generate", "out.pth", "--prompt", prompt, "--tokenizer", "tok", "--temperature", "0",
               "--max-tokens", "10")
    assert ours.returncode == 0, ours.stderr
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")
    text = tok.encode(" ".join((tmp_path / "data.txt").read_text().splitlines()[:4]))
    theirs = pip_rwkv7(tmp_path, tmp_path / "out.pth", prompt=tok.encode(prompt), max_tokens=10,
                       tokens=text, pieces=[text])
    greedy = theirs["greedy"]
    assert len(greedy) == 10
    # the trained file's logits agree too (greedy text alone can be one repeated word)
    _, whole, _, _ = _our_logits(tmp_path / "out.pth", text, [text])
    assert (whole - theirs["logits"]).abs().max() < 1e-4
    # generate prints the prompt, then what the new ids add to the tokenizer's decode
    ids = tok.encode(prompt)
    assert ours.stdout.rstrip("\n") == prompt + tok.decode(ids + greedy)[len(tok.decode(ids)):]
