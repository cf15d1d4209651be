"""Our model files and forward math against the independent ``rwkv`` pip package."""

from __future__ import annotations

import pytest

import torch

from rwkv_plug.models import load_model
from rwkv_plug.models.export import export_checkpoint
from rwkv_plug.models.init import init_state_dict


@pytest.mark.slow
def test_exported_model_matches_rwkv_pip_package(tmp_path, monkeypatch):
    # a trained-looking model: our init, then every tensor perturbed
    sd = init_state_dict(2, 128, 1000, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    sd = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "last.ckpt")
    _, path, _ = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "model.pth", "fp32")

    tokens = torch.randint(0, 1000, (37,), generator=g).tolist()
    ours = load_model(path).eval()
    with torch.no_grad():
        logits, state = ours(torch.tensor([tokens]))

    # the rwkv package reads these at import; set them for this test only
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV

    theirs = RWKV(str(path), strategy="cpu fp32")
    their_logits, their_state = theirs.forward(tokens, None, full_output=True)

    assert their_logits.shape == (37, 1000)
    assert torch.allclose(logits[0], their_logits, atol=1e-3, rtol=0)
    # same state layout: per layer att shift (C), wkv (H, N, N) as [h, k, v], ffn shift (C)
    assert len(their_state) == len(state) == 6
    for ours_s, theirs_s in zip(state, their_state):
        assert torch.allclose(ours_s[0], theirs_s, atol=1e-3, rtol=0)

    # continuing from the carried state agrees too
    more = [3, 141, 59]
    with torch.no_grad():
        logits2, _ = ours(torch.tensor([more]), state)
    their_logits2, _ = theirs.forward(more, their_state, full_output=True)
    assert torch.allclose(logits2[0], their_logits2, atol=1e-3, rtol=0)
