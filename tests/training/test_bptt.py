"""Chunked BPTT: exact gradients, truncation, learning range, memory."""

from __future__ import annotations

import pytest
import torch

from rwkv_plug.training.bptt import BpttSettings, sequence_loss
from rwkv_plug.training.loss import chunk_loss
from rwkv_plug.training.testing import ToyRWKV


def _data(B=2, L=25, V=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, L), generator=g)
    mask = (torch.rand(B, L, generator=g) > 0.3).long()
    return ids, mask


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _full_reference(model, ids, mask, first_chunk=0, ctx_len=None):
    """Backprop through the whole sequence at once, in one call."""
    model.zero_grad()
    B = ids.shape[0]
    tmask = mask[:, 1:].clone()
    denom = tmask.sum().float().clamp(min=1)
    if first_chunk:
        tmask[:, : first_chunk * ctx_len] = 0  # loss only from the later chunks
    logits, _ = model(ids[:, :-1])
    loss = chunk_loss(logits, ids[:, 1:], tmask, denom, B)
    loss.backward()
    return loss.detach(), _grads(model)


def _chunked(model, ids, mask, **kw):
    model.zero_grad()
    out = sequence_loss(model, ids, mask, BpttSettings(**kw), train=True)
    out.loss.backward()
    return out, _grads(model)


def _max_rel(a, b):
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max().clamp(min=1e-30)).item() for n in a)


def test_exact_bptt_matches_full_sequence_fp64():
    model = ToyRWKV(n_layer=2).double()
    ids, mask = _data(L=4 * 6 + 1)
    ref_loss, ref = _full_reference(model, ids, mask)
    out, got = _chunked(model, ids, mask, ctx_len=6)
    assert out.chunks == 4
    assert torch.allclose(out.loss.double(), ref_loss.double(), atol=1e-12)
    assert _max_rel(got, ref) < 1e-10


def test_exact_bptt_fp32_is_round_off_close():
    model = ToyRWKV(n_layer=2)
    ids, mask = _data(L=5 * 4 + 1)
    _, ref = _full_reference(model, ids, mask)
    _, got = _chunked(model, ids, mask, ctx_len=4)
    assert _max_rel(got, ref) < 1e-4


def test_uneven_length_is_padded_with_masked_tokens():
    model = ToyRWKV().double()
    ids, mask = _data(L=14)  # 13 targets -> 3 chunks of 5, last one padded
    ref_loss, ref = _full_reference(model, ids, mask)
    out, got = _chunked(model, ids, mask, ctx_len=5)
    assert out.chunks == 3
    assert torch.allclose(out.loss.double(), ref_loss.double(), atol=1e-12)
    assert _max_rel(got, ref) < 1e-10


def _rows(lengths, V=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, V, (n,), generator=g).tolist(),
             "loss_mask": (torch.rand(n, generator=g) > 0.2).long().tolist()} for n in lengths]


def _pad(t, width):
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=0)


@pytest.mark.parametrize("kw", [{}, {"truncated": True}, {"learning": False}, {"learning_range": 1}],
                         ids=["exact", "truncated", "plain", "range"])
@pytest.mark.parametrize("ctx_len", [16, 4])
def test_a_batch_padded_to_its_longest_row_trains_as_if_padded_to_whole_chunks(kw, ctx_len):
    """Short rows are padded to the longest row only (7 tokens, not ctx_len + 1 = 17; with
    ctx_len 4 the last chunk is 2 long); the loss and every gradient are those of the batch
    padded to whole chunks (the earlier collation), also when another rank makes this one run
    two filler chunks after it."""
    from rwkv_plug.training.batches import collate

    model = ToyRWKV(n_layer=2).double()
    batch = collate(_rows([3, 7, 5]))
    ids, mask = batch["input_ids"], batch["loss_mask"]
    assert ids.shape == (3, 7)
    out, got = _chunked(model, ids, mask, ctx_len=ctx_len, **kw)
    chunks = -(-6 // ctx_len)
    assert out.chunks == chunks
    width = chunks * ctx_len + 1
    model.zero_grad()
    filled = sequence_loss(model, ids, mask, BpttSettings(ctx_len=ctx_len, **kw), train=True,
                           sync_chunks=lambda n: n + 2)
    filled.loss.backward()
    assert (filled.chunks, filled.chunks_run) == (chunks, chunks + 2)
    for ref_out, ref in (_chunked(model, _pad(ids, width), _pad(mask, width), ctx_len=ctx_len, **kw),
                         (filled, _grads(model))):
        assert torch.allclose(out.loss, ref_out.loss, rtol=0, atol=1e-14)
        assert torch.allclose(out.data_loss, ref_out.data_loss, rtol=0, atol=1e-14)
        assert out.trained_tokens == ref_out.trained_tokens
        assert _max_rel(got, ref) < 1e-12


def test_learning_range_is_exact_gradient_of_last_chunks_loss():
    model = ToyRWKV().double()
    ids, mask = _data(L=4 * 5 + 1)
    # last 2 of 4 chunks: loss from chunks 2,3, normalised by the whole sample's mask sum,
    # and the gradient still flows through the carried state into chunks 0,1
    ref_loss, ref = _full_reference(model, ids, mask, first_chunk=2, ctx_len=5)
    out, got = _chunked(model, ids, mask, ctx_len=5, learning_range=2)
    assert torch.allclose(out.loss.double(), ref_loss.double(), atol=1e-12)
    assert _max_rel(got, ref) < 1e-10
    # the reported loss still covers every chunk
    full_loss, _ = _full_reference(model, ids, mask)
    assert torch.allclose(out.data_loss.double(), full_loss.double(), atol=1e-12)
    assert out.trained_tokens == int(mask[:, 1:][:, 10:].sum())


def test_truncated_detaches_state_between_chunks():
    model = ToyRWKV().double()
    ids, mask = _data(L=3 * 4 + 1)
    # reference: run each chunk with a detached incoming state, one graph per chunk
    model.zero_grad()
    B, ctx = ids.shape[0], 4
    tmask = mask[:, 1:]
    denom = tmask.sum().double()
    state = model.zero_state(B)
    total = 0.0
    for i in range(3):
        c = slice(i * ctx, (i + 1) * ctx)
        state = tuple(s.detach() for s in state)
        logits, state = model(ids[:, :-1][:, c], state)
        total = total + chunk_loss(logits, ids[:, 1:][:, c], tmask[:, c], denom, B)
    total.backward()
    ref = _grads(model)
    out, got = _chunked(model, ids, mask, ctx_len=4, truncated=True)
    assert torch.allclose(out.loss.double(), total.detach(), atol=1e-12)
    assert _max_rel(got, ref) < 1e-10
    _, exact = _chunked(model, ids, mask, ctx_len=4)
    assert _max_rel(got, exact) > 1e-6  # truncation really changes the gradient


def test_plain_autograd_mode_equals_exact_mode():
    model = ToyRWKV().double()
    ids, mask = _data(L=3 * 4 + 1)
    a_out, a = _chunked(model, ids, mask, ctx_len=4, learning=False)
    b_out, b = _chunked(model, ids, mask, ctx_len=4)
    assert torch.allclose(a_out.loss, b_out.loss)
    assert _max_rel(a, b) < 1e-10


def test_filler_chunks_add_zero_loss_and_gradient():
    model = ToyRWKV().double()
    ids, mask = _data(L=2 * 4 + 1)
    ref_out, ref = _chunked(model, ids, mask, ctx_len=4)
    model.zero_grad()
    out = sequence_loss(model, ids, mask, BpttSettings(ctx_len=4), train=True, sync_chunks=lambda n: n + 3)
    out.loss.backward()
    assert (out.chunks, out.chunks_run) == (2, 5)
    assert torch.equal(out.loss, ref_out.loss)
    assert _max_rel(_grads(model), ref) == 0.0


def test_dropout_is_replayed_in_recomputation():
    model = ToyRWKV(dropout=0.3).double().train()
    ids, mask = _data(L=3 * 4 + 1)
    torch.manual_seed(5)
    _, ref = _chunked(model, ids, mask, ctx_len=4, learning=False)
    torch.manual_seed(5)
    _, got = _chunked(model, ids, mask, ctx_len=4)
    assert _max_rel(got, ref) < 1e-10


def test_validation_has_no_graph_and_equals_training_loss():
    model = ToyRWKV()
    ids, mask = _data(L=3 * 4 + 1)
    with torch.no_grad():
        ev = sequence_loss(model, ids, mask, BpttSettings(ctx_len=4), train=False)
    assert not ev.loss.requires_grad
    tr = sequence_loss(model, ids, mask, BpttSettings(ctx_len=4), train=True)
    assert torch.allclose(ev.loss, tr.data_loss)


def _saved_bytes(model, ids, mask, ctx_len):
    """Bytes of tensors autograd keeps alive between forward and backward."""
    model.zero_grad()
    seen: dict[int, int] = {}

    def pack(t):
        seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sequence_loss(model, ids, mask, BpttSettings(ctx_len=ctx_len), train=True)
    fn = _prefix_node(out.loss.grad_fn)
    return sum(seen.values()) + fn.kept.nbytes(), out, fn


def _prefix_node(fn):
    """The chunked-prefix Function node in the loss graph."""
    todo, seen = [fn], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "kept"):
            return node
        todo.extend(n for n, _ in node.next_functions)
    raise AssertionError("no chunked-prefix node in the graph")


def test_memory_between_forward_and_backward_is_only_boundary_states():
    model = ToyRWKV()
    short, _, _ = _saved_bytes(model, *_data(B=1, L=2 * 8 + 1), ctx_len=8)
    long, out, node = _saved_bytes(model, *_data(B=1, L=16 * 8 + 1), ctx_len=8)
    state_bytes = sum(s.numel() * s.element_size() for s in model.zero_state(1))
    # a longer sample keeps only one more start state per chunk, no activations
    # (the last chunk's graph is kept either way)
    assert long - short == 14 * state_bytes
    assert short < 2 * state_bytes + 200_000
    out.loss.backward()
    assert node.kept is None  # freed after backward


def _storages(node) -> set[int]:
    """Distinct allocations behind everything the chunked prefix keeps for backward."""
    kept = node.kept.buffers()
    return {t.untyped_storage().data_ptr() for t in kept}


def test_kept_states_live_in_a_few_buffers_whatever_the_length():
    from rwkv_plug.models import load_model
    from rwkv_plug.models.init import init_state_dict

    model = load_model(init_state_dict(3, 64, 50, seed=0, dtype=torch.float32), kernel="torch")
    counts, sizes = [], []
    for chunks in (3, 12):
        ids, mask = _data(B=2, L=chunks * 4 + 1, V=50)
        _, out, node = _saved_bytes(model, ids, mask, ctx_len=4)
        counts.append(len(_storages(node)))
        sizes.append(node.kept.nbytes())
        out.loss.backward()
    # one buffer per state shape (token shifts, WKV states) plus one for the RNG states,
    # however many chunks and layers; one tensor per layer and chunk was 3 * 3 * 11 + 12 here
    assert counts == [3, 3]
    # and the buffers hold exactly the start states of chunks 1 .. n-2 (chunk 0 starts from
    # zeros, the last chunk's start is its autograd input): per layer 2*B*C*4 + B*H*N*N*4 bytes
    B, C, H, N, L = 2, 64, 1, 64, 3
    per_state = L * (2 * B * C * 4 + B * H * N * N * 4)
    assert sizes == [1 * per_state, 10 * per_state]


def test_exact_bptt_with_the_rwkv5_model_fp64():
    from rwkv_plug.models import load_model
    from rwkv_plug.models.init import init_state_dict

    sd = init_state_dict(2, 64, 50, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    # init zeroes some matrices; perturb so every path carries gradient
    sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    model = load_model(sd, kernel="torch", dtype=torch.float64)
    ids = torch.randint(0, 50, (2, 3 * 16 + 1), generator=g)
    mask = (torch.rand(ids.shape, generator=g) > 0.2).long()
    ref_loss, ref = _full_reference(model, ids, mask)
    out, got = _chunked(model, ids, mask, ctx_len=16)
    assert torch.allclose(out.loss.double(), ref_loss.double(), atol=1e-12)
    for n in ref:
        rel = ((got[n] - ref[n]).abs().max() / ref[n].abs().max()).item()
        # every tensor, time_decay and time_faaaa included: an fp64 model computes w and u
        # in fp64 (rwkv5.py promotes them to at least fp32), so all are fp64-exact (~1e-15)
        assert rel < 1e-10, (n, rel)


def test_mixed_precision_recomputation_is_as_accurate_as_plain_autograd():
    model = ToyRWKV()
    ids, mask = _data(L=3 * 4 + 1)
    _, ref = _chunked(model, ids, mask, ctx_len=4)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, plain = _chunked(model, ids, mask, ctx_len=4, learning=False)
        _, ours = _chunked(model, ids, mask, ctx_len=4)
    # the recomputation re-enters autocast: bf16-level error, no worse than one plain graph
    # (which sums the chunks' weight gradients in bf16 at the cached cast)
    assert _max_rel(ours, ref) < 2e-2
    assert _max_rel(ours, ref) <= 1.5 * _max_rel(plain, ref)


def test_chunk_store_keeps_exact_copies_and_says_when_the_layout_changes(capsys, monkeypatch):
    from rwkv_plug.core import notice
    from rwkv_plug.training.chunk_states import ChunkStore

    monkeypatch.setattr(notice, "_said", set())
    store = ChunkStore(3, "state")
    a = (torch.randn(2, 4), torch.randn(2, 1, 3, 3), torch.randn(2, 4))
    b = tuple(t + 1 for t in a)
    store.put(0, a)
    store.put(2, b)
    assert all(torch.equal(x, y) for x, y in zip(store.get(0), a))
    assert all(torch.equal(x, y) for x, y in zip(store.get(2), b))
    assert len(store.buffers()) == 2 and capsys.readouterr().err == ""
    odd = (a[0].double(), a[1], a[2])  # another dtype: kept as its own copy, said once
    store.put(1, odd)
    store.put(1, odd)
    assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(store.get(1), odd))
    assert capsys.readouterr().err.count("changed shape or dtype between chunks") == 1
