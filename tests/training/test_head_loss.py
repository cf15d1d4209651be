"""The head and loss in token chunks equal the full-logits loss, in value and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rwkv_plug.models import load_model
from rwkv_plug.models.init import init_state_dict as init5
from rwkv_plug.models.init7 import init_state_dict as init7
from rwkv_plug.models.rwkv7 import LoraDims
from rwkv_plug.training.bptt import BpttSettings, sequence_loss
from rwkv_plug.training.head_loss import DEFAULT_HEAD_CHUNK_TOKENS, head_loss, token_losses
from rwkv_plug.training.loss import chunk_loss

#: (max relative difference allowed, dtype): relative to each tensor's largest magnitude
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def _data(B=2, L=30, V=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L), generator=g)
    mask = (torch.rand(B, L, generator=g) > 0.3).long()
    mask[1, 3:11] = 0  # a run of masked rows inside a head chunk
    return ids, mask


# -- the function alone ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("l2wrap", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 64])  # 2*29 = 58 rows: 7 leaves a short last chunk, 64 is one chunk
def test_head_loss_equals_full_logits(dtype, l2wrap, chunk):
    ids, mask = _data()
    B, T = ids.shape[0], ids.shape[1] - 1
    g = torch.Generator().manual_seed(2)
    h = (torch.randn(B, T, 16, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    w = torch.randn(50, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    targets, tmask = ids[:, 1:], mask[:, 1:]
    denom = tmask.sum().to(dtype)
    ref = chunk_loss(h @ w.t(), targets, tmask, denom, B, l2wrap)
    ref_grads = torch.autograd.grad(ref * 0.37, (h, w))  # a scale arriving at the loss is applied too
    got = head_loss(h, w, targets, tmask, denom, B, l2wrap, chunk)
    got_grads = torch.autograd.grad(got * 0.37, (h, w))
    tol = TOLERANCE[dtype]
    assert got.dtype == ref.dtype
    assert abs(got.item() - ref.item()) <= tol * abs(ref.item())
    for a, b in zip(got_grads, ref_grads):
        assert _rel(a, b) <= tol
    # the masked rows get no gradient at all
    assert got_grads[0][1, 3:10].abs().max().item() == 0.0


def test_l2wrap_changes_the_gradient_not_the_loss():
    ids, mask = _data()
    h = torch.randn(2, 29, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    denom = mask[:, 1:].sum().double()
    on = head_loss(h, w, ids[:, 1:], mask[:, 1:], denom, 2, True, 8)
    off = head_loss(h, w, ids[:, 1:], mask[:, 1:], denom, 2, False, 8)
    assert on.item() == off.item()
    g_on, g_off = torch.autograd.grad(on, w)[0], torch.autograd.grad(off, w)[0]
    assert (g_on - g_off).abs().max().item() > 1e-6  # the pull is there, and the test above checks its size


def test_losses_alive_at_once_keep_their_own_weight_gradients():
    """The weight gradient's memory is pooled on CPU (models/grad_pool.py): a second loss made before
    the first one's backward must not get (and overwrite) the same buffer."""
    ids, mask = _data()
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    hs = [torch.randn(2, 29, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
    denom = mask[:, 1:].sum().double()
    losses = [head_loss(h, w, ids[:, 1:], mask[:, 1:], denom, 2, True, 8) for h in hs]
    got = [torch.autograd.grad(loss, w)[0] for loss in losses]
    for h, g in zip(hs, got):
        ref = torch.autograd.grad(chunk_loss(h @ w.t(), ids[:, 1:], mask[:, 1:], denom, 2), w)[0]
        assert _rel(g, ref) < 1e-12


def test_no_gradient_path_and_token_losses():
    ids, _ = _data()
    h = torch.randn(2, 29, 16, dtype=torch.float64)
    w = torch.randn(50, 16, dtype=torch.float64)
    logits = h @ w.t()
    ce = F.cross_entropy(logits.reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="none").view(2, 29)
    assert torch.allclose(token_losses(h, w, ids[:, 1:], chunk=5), ce, rtol=0, atol=1e-12)
    mask = torch.ones(2, 29, dtype=torch.long)
    loss = head_loss(h, w, ids[:, 1:], mask, mask.sum().double(), 2, True, 5)
    assert not loss.requires_grad
    assert abs(loss.item() - ce.mean().item()) < 1e-12


def test_bf16_loss_is_computed_in_fp32():
    ids, mask = _data()
    h = torch.randn(2, 29, 16).bfloat16().requires_grad_()
    w = torch.randn(50, 16).bfloat16().requires_grad_()
    denom = mask[:, 1:].sum().float()
    ref = chunk_loss(h @ w.t(), ids[:, 1:], mask[:, 1:], denom, 2)
    got = head_loss(h, w, ids[:, 1:], mask[:, 1:], denom, 2, True, 7)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) < 1e-4 * ref.item()
    got.backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16


# -- through the models and the BPTT engine ----------------------------------------------------------

def _model(arch: str, dtype: torch.dtype):
    if arch == "rwkv5":
        sd = init5(2, 64, 50, seed=0, dtype=torch.float64)
    else:
        sd = init7(2, 64, 50, seed=0, lora=LoraDims(decay=16, a=16, value=8, gate=16), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    # the init zeroes some matrices; noise makes every path carry gradient
    sd = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in sd.items()}
    return load_model(sd, kernel="torch", dtype=dtype)


def _run(model, ids, mask, **kw):
    model.zero_grad(set_to_none=True)
    out = sequence_loss(model, ids, mask, BpttSettings(**kw), train=True)
    out.loss.backward()
    trained = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, trained


SETTINGS = {
    "one ctx chunk": dict(ctx_len=64),
    "exact, 4 ctx chunks": dict(ctx_len=8),
    "truncated": dict(ctx_len=8, truncated=True),
    "learning range 2": dict(ctx_len=8, learning_range=2),
    "one plain graph": dict(ctx_len=8, learning=False),
}


@pytest.mark.parametrize("arch", ["rwkv5", "rwkv7"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_models_chunked_head_equals_full_logits_fp64(arch, setting):
    model = _model(arch, torch.float64)
    ids, mask = _data(L=30)  # 29 targets: ctx 8 leaves a last ctx chunk of 5; head chunk 3 one of 2
    kw = SETTINGS[setting]
    ref, ref_grads = _run(model, ids, mask, head_chunk=0, **kw)
    got, got_grads = _run(model, ids, mask, head_chunk=3, **kw)
    assert abs(got.loss.item() - ref.loss.item()) <= 1e-12 * abs(ref.loss.item())
    assert abs(got.data_loss.item() - ref.data_loss.item()) <= 1e-12 * abs(ref.data_loss.item())
    assert set(got_grads) == set(ref_grads)
    assert {"emb.weight", "head.weight", "ln_out.weight", "ln_out.bias"} <= set(got_grads)
    worst = max(got_grads, key=lambda n: _rel(got_grads[n], ref_grads[n]))
    assert _rel(got_grads[worst], ref_grads[worst]) <= 1e-12, worst


@pytest.mark.parametrize("arch", ["rwkv5", "rwkv7"])
@pytest.mark.parametrize("setting", ["one ctx chunk", "exact, 4 ctx chunks", "learning range 2"])
def test_models_chunked_head_fp32(arch, setting):
    """fp32: the loss and the head's own tensors within 1e-6 of the full-logits path. Deeper tensors
    differ from the full-logits path by fp32 round-off amplified through the blocks (up to ~1e-5 for
    a gradient that is a sum of cancelling terms, such as rwkv5's time_faaaa), the size of the
    full-logits path's own error: so each is held to at most twice that error against fp64."""
    kw = SETTINGS[setting]
    ids, mask = _data(L=30)
    _, truth = _run(_model(arch, torch.float64), ids, mask, head_chunk=0, **kw)
    model = _model(arch, torch.float32)
    ref, ref_grads = _run(model, ids, mask, head_chunk=0, **kw)
    got, got_grads = _run(model, ids, mask, head_chunk=3, **kw)
    assert abs(got.loss.item() - ref.loss.item()) <= 1e-6 * abs(ref.loss.item())
    for name in ("head.weight", "ln_out.weight", "ln_out.bias"):
        assert _rel(got_grads[name], ref_grads[name]) <= 1e-6, name
    for name, g in got_grads.items():
        assert _rel(g.double(), truth[name]) <= 2 * _rel(ref_grads[name].double(), truth[name]) + 1e-7, name


def test_validation_loss_unchanged():
    model = _model("rwkv7", torch.float64).eval()
    ids, mask = _data(L=30)
    with torch.no_grad():
        ref = sequence_loss(model, ids, mask, BpttSettings(ctx_len=8, head_chunk=0), train=False).loss
        got = sequence_loss(model, ids, mask, BpttSettings(ctx_len=8, head_chunk=4), train=False).loss
    assert abs(got.item() - ref.item()) < 1e-12


@pytest.mark.parametrize("arch", ["rwkv5", "rwkv7"])
def test_head_modes(arch):
    model = _model(arch, torch.float64).eval()
    ids, _ = _data(L=9)
    with torch.no_grad():
        logits, state = model(ids)
        last, state_last = model(ids, head="last")
        h, state_h = model(ids, head=False)
    assert last.shape == (2, 1, 50)
    assert torch.allclose(last, logits[:, -1:], rtol=0, atol=1e-12)
    assert h.shape == (2, 9, 64)
    assert torch.allclose(h @ model.head.weight.t(), logits, rtol=0, atol=1e-12)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(state, state_last, state_h))
    with pytest.raises(ValueError, match="head must be"):
        model(ids, head="first")


def test_default_chunk_is_the_config_default():
    from rwkv_plug.training.options import MODEL_OPTIONS

    option = next(o for o in MODEL_OPTIONS if o.name == "head_chunk_tokens")
    assert option.default == DEFAULT_HEAD_CHUNK_TOKENS
