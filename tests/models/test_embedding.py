"""The embedding whose CPU gradient memory is reused: the same gradients as nn.Embedding, always."""

from __future__ import annotations

import torch

from rwkv_plug.models.embedding import Embedding


def _pair(V=40, C=8, seed=0):
    torch.manual_seed(seed)
    plain = torch.nn.Embedding(V, C)
    pooled = Embedding(V, C)
    pooled.load_state_dict(plain.state_dict())
    return plain, pooled


def _batch(seed: int, V=40, C=8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, 12), generator=g)
    ids[0, :4] = 5  # repeated rows add up
    return ids, torch.randn(2, 12, C, generator=g)


def test_accumulation_and_reuse_equal_nn_embedding():
    plain, pooled = _pair()
    for step in range(3):
        for micro in range(3):  # gradient accumulation: .grad is live while the next backward runs
            ids, g = _batch(10 * step + micro)
            plain(ids).backward(g)
            pooled(ids).backward(g)
            assert torch.equal(pooled.weight.grad, plain.weight.grad)
        plain.weight.grad = pooled.weight.grad = None  # optimizer.zero_grad(set_to_none=True)


def test_memory_is_reused_once_free_and_never_while_held():
    _, pooled = _pair()
    ids, g = _batch(1)
    pooled(ids).backward(g)
    first = pooled.weight.grad
    ptr = first.data_ptr()
    kept = first.clone()
    pooled.weight.grad = None
    ids2, g2 = _batch(2)
    pooled(ids2).backward(g2)
    # `first` is still referenced here: its memory must not have been handed out again
    assert torch.equal(first, kept)
    assert pooled.weight.grad.data_ptr() != ptr
    del first
    pooled.weight.grad = None
    pooled(ids).backward(g)
    assert pooled.weight.grad.data_ptr() == ptr  # free again: reused (the point of the class)
    assert torch.equal(pooled.weight.grad, kept)


def test_adamw_steps_match():
    plain, pooled = _pair()
    opts = [torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.5) for m in (plain, pooled)]
    for step in range(3):
        ids, g = _batch(step)
        for m, opt in zip((plain, pooled), opts):
            (m(ids) * g).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert torch.equal(plain.weight, pooled.weight)


def test_frozen_and_no_grad_are_plain_lookups():
    _, pooled = _pair()
    ids, _ = _batch(0)
    pooled.weight.requires_grad_(False)
    out = pooled(ids)
    assert not out.requires_grad and torch.equal(out, pooled.weight[ids])
    pooled.weight.requires_grad_(True)
    with torch.no_grad():
        assert not pooled(ids).requires_grad
    assert isinstance(pooled, torch.nn.Embedding) and list(pooled.state_dict()) == ["weight"]
