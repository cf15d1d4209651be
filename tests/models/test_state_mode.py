"""``head="state"``: a run for the new state only equals the whole forward's state, values and
gradients, and really skips the last block's output side (what exact BPTT's added runs use)."""

from __future__ import annotations

import pytest
import torch

from rwkv_plug.models.rwkv5 import RWKV5
from rwkv_plug.training.head_loss import model_state


def _model(dropout: float = 0.0, seed: int = 0) -> RWKV5:
    torch.manual_seed(seed)
    model = RWKV5(3, 128, 50, kernel="torch", dropout=dropout).double()
    with torch.no_grad():  # every tensor away from its init (zero-init outputs would hide a wrong path)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _inputs(B: int = 2, T: int = 70, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 50, (B, T), generator=g)
    model = _model()
    state = tuple(torch.randn(s.shape, generator=g, dtype=s.dtype) * 0.5 for s in model.zero_state(B))
    return idx, state


def _resets(B: int, T: int) -> torch.Tensor:
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 32] = True  # a packed record starting at a chunk boundary (torch kernel: multiples of 32)
    resets[1, 0] = resets[1, 64] = True
    return resets


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "reset-packed"])
def test_state_only_run_equals_the_whole_forward_in_values_and_gradients(packed):
    model = _model()
    idx, s0 = _inputs()
    kw = {"resets": _resets(*idx.shape)} if packed else {}
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(s.shape, generator=g, dtype=s.dtype) for s in s0]

    def run(head):
        model.zero_grad()
        start = tuple(s.clone().requires_grad_(True) for s in s0)
        out, state = model(idx, start, head=head, **kw)
        sum(((s * w).sum() for s, w in zip(state, weights))).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return out, [s.detach() for s in state], [s.grad for s in start], grads

    out, state, g_start, g_params = run("state")
    _, ref_state, ref_g_start, ref_g_params = run(True)
    assert out is None
    assert len(state) == len(ref_state) == 9
    for a, b in zip(state, ref_state):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    # the last block's old channel-mix shift reaches no state (None in both); every other start gets a gradient
    assert [a is None for a in g_start] == [b is None for b in ref_g_start] == [False] * 8 + [True]
    for a, b in zip(g_start[:8], ref_g_start[:8]):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    # the head, ln_out and the last channel mix get no gradient from the state: both paths agree on all others
    assert len(g_params) == len(ref_g_params)
    for a, b in zip(g_params, ref_g_params):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_model_state_skips_the_last_blocks_channel_mix_and_the_head():
    model = _model()
    idx, s0 = _inputs()
    calls = []
    for module in (model.blocks[-1].ffn, model.head, model.blocks[0].ffn):
        module.register_forward_hook(lambda m, i, o, name=module: calls.append(name))
    with torch.no_grad():
        state = model_state(model, idx, s0)
    assert calls == [model.blocks[0].ffn]  # the first block runs whole, the last for its state only
    with torch.no_grad():
        _, ref = model(idx, s0)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(state, ref))


def test_with_dropout_in_training_every_block_runs_whole_and_draws_the_same_random_numbers():
    model = _model(dropout=0.2).train()
    idx, s0 = _inputs()
    torch.manual_seed(7)
    with torch.no_grad():
        _, state = model(idx, s0, head="state")
    after = torch.get_rng_state()
    torch.manual_seed(7)
    with torch.no_grad():
        _, ref = model(idx, s0)
    # the next chunk's dropout masks start from the same generator state either way
    assert torch.equal(after, torch.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(state, ref))
