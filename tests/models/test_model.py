"""The RWKV-v5 model: x052 layout, init formulas, detection, state and chunking."""

from __future__ import annotations

import math

import pytest
import torch

from rwkv_plug.core.errors import ModelError
from rwkv_plug.kernels.wkv5.reference import wkv5_recurrent
from rwkv_plug.models import load_model
from rwkv_plug.models.arch import RWKV5Arch, x052_shapes
from rwkv_plug.models.init import init_state_dict
from rwkv_plug.models.io import save_state_dict
from rwkv_plug.models.rwkv5 import RWKV5



class RecurrentKernel:
    """The executable spec as a kernel object (also checks objects are accepted)."""

    name = "recurrent"

    def wkv5(self, r, k, v, w, u, s0):
        return wkv5_recurrent(r, k, v, w, u, s0)


def perturbed(n_layer=2, n_embd=128, vocab=300, seed=0, dtype=torch.float32):
    """An init state dict with noise on every tensor, so nothing is trivially zero."""
    sd = init_state_dict(n_layer, n_embd, vocab, seed=seed, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    return {k: (v + 0.05 * torch.randn(v.shape, generator=g)).to(dtype) for k, v in sd.items()}


def spec_table(L: int, C: int, V: int) -> dict[str, tuple[int, ...]]:
    """reference-behaviour.md §4.2, transcribed line by line (A = C, F = 3.5C//32*32, H = A/64)."""
    A, F, H = C, int(C * 3.5 // 32 * 32), C // 64
    rows = [("emb.weight", (V, C)), ("blocks.0.ln0.weight", (C,)), ("blocks.0.ln0.bias", (C,))]
    per_layer = [
        ("ln1.weight", (C,)), ("ln1.bias", (C,)), ("ln2.weight", (C,)), ("ln2.bias", (C,)),
        ("att.time_mix_k", (1, 1, C)), ("att.time_mix_v", (1, 1, C)),
        ("att.time_mix_r", (1, 1, C)), ("att.time_mix_g", (1, 1, C)),
        ("att.time_decay", (H, 64)), ("att.time_faaaa", (H, 64)),
        ("att.receptance.weight", (A, C)), ("att.key.weight", (A, C)),
        ("att.value.weight", (A, C)), ("att.output.weight", (C, A)), ("att.gate.weight", (A, C)),
        ("att.ln_x.weight", (A,)), ("att.ln_x.bias", (A,)),
        ("ffn.time_mix_k", (1, 1, C)), ("ffn.time_mix_r", (1, 1, C)),
        ("ffn.key.weight", (F, C)), ("ffn.receptance.weight", (C, C)), ("ffn.value.weight", (C, F)),
    ]
    for l in range(L):
        rows += [(f"blocks.{l}.{name}", shape) for name, shape in per_layer]
    rows += [("ln_out.weight", (C,)), ("ln_out.bias", (C,)), ("head.weight", (V, C))]
    return dict(rows)


@pytest.mark.parametrize("vocab", [50277, 65536, 20259])
def test_x052_layout_matches_spec_for_seed_models(vocab):
    assert x052_shapes(6, 512, vocab) == spec_table(6, 512, vocab)
    assert spec_table(6, 512, vocab)["blocks.0.ffn.key.weight"] == (1792, 512)


def test_init_state_dict_is_exactly_the_layout_in_bf16():
    sd = init_state_dict(3, 128, 777, seed=0)
    assert {k: tuple(v.shape) for k, v in sd.items()} == spec_table(3, 128, 777)
    assert all(v.dtype == torch.bfloat16 and v.device.type == "cpu" for v in sd.values())


def test_init_formulas():
    L, C, V = 4, 128, 500
    sd = init_state_dict(L, C, V, seed=0, dtype=torch.float32)
    l = 2
    r0, r1 = l / (L - 1), 1 - l / L
    i, n = 37, 100  # a channel of C and one of A
    att = f"blocks.{l}.att."
    assert sd[att + "time_mix_k"][0, 0, i] == pytest.approx((i / C) ** r1, rel=1e-6)
    assert sd[att + "time_mix_v"][0, 0, i] == pytest.approx((i / C) ** r1 + 0.3 * r0, rel=1e-6)
    assert sd[att + "time_mix_r"][0, 0, i] == pytest.approx((i / C) ** (0.5 * r1), rel=1e-6)
    assert sd[att + "time_mix_g"][0, 0, i] == pytest.approx((i / C) ** (0.5 * r1), rel=1e-6)
    assert sd[f"blocks.{l}.ffn.time_mix_r"][0, 0, i] == pytest.approx((i / C) ** r1, rel=1e-6)
    decay = -6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r0)
    assert sd[att + "time_decay"].flatten()[n] == pytest.approx(decay, rel=1e-6)
    faaaa = r0 * (1 - n / (C - 1)) + 0.1 * (((n + 1) % 3) - 1)
    assert sd[att + "time_faaaa"].flatten()[n] == pytest.approx(faaaa, rel=1e-5)
    lnx = sd[att + "ln_x.weight"]
    assert torch.allclose(lnx, torch.full_like(lnx, ((l + 1) / L) ** 0.7))
    for zero in ("att.output.weight", "ffn.value.weight", "ffn.receptance.weight"):
        assert torch.count_nonzero(sd[f"blocks.{l}.{zero}"]) == 0
    emb = sd["emb.weight"]
    assert emb.abs().max() <= 1e-4 and emb.std() > 1e-5
    # head: orthogonal columns with gain 0.5 * sqrt(V / C)
    head = sd["head.weight"]
    gram = head.T @ head
    assert torch.allclose(gram, torch.eye(C) * 0.25 * V / C, atol=1e-3 * V / C)
    # square matrix: orthogonal, gain 1; wide ffn.value would be zero, tall ffn.key gain sqrt(F/C)
    key = sd[att + "key.weight"]
    assert torch.allclose(key @ key.T, torch.eye(C), atol=1e-4)
    fk = sd[f"blocks.{l}.ffn.key.weight"]
    assert torch.allclose(fk.T @ fk, torch.eye(C) * fk.shape[0] / C, atol=1e-3)


def test_one_layer_init_has_no_division_by_zero():
    sd = init_state_dict(1, 64, 10, seed=0, dtype=torch.float32)
    assert all(torch.isfinite(v).all() for v in sd.values())
    # documented convention: r0 = 0 for the single layer
    assert sd["blocks.0.att.time_mix_v"][0, 0, 5] == pytest.approx((5 / 64) ** 1.0, rel=1e-6)


def test_init_is_reproducible_with_a_seed():
    a, b = init_state_dict(2, 64, 50, seed=3), init_state_dict(2, 64, 50, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad", [dict(n_layer=0), dict(n_embd=100), dict(vocab_size=0)])
def test_init_rejects_bad_sizes(bad):
    args = dict(n_layer=2, n_embd=128, vocab_size=10) | bad
    with pytest.raises(ModelError):
        init_state_dict(**args)


def test_detection_and_dims():
    sd = perturbed(3, 128, 300)
    assert RWKV5Arch.detect(sd)
    assert RWKV5Arch.dims(sd) == dict(n_layer=3, n_embd=128, vocab_size=300, dim_att=128, dim_ffn=448)
    v6 = dict(sd, **{"blocks.0.att.time_maa_x": torch.zeros(1, 1, 128)})
    assert not RWKV5Arch.detect(v6)
    no_lnx = {k: v for k, v in sd.items() if "ln_x" not in k}
    assert not RWKV5Arch.detect(no_lnx)
    v51 = dict(sd, **{"blocks.0.att.time_decay": torch.zeros(128)})
    assert not RWKV5Arch.detect(v51)


def test_load_model_reports_what_it_found_when_nothing_matches():
    with pytest.raises(ModelError) as err:
        load_model({"foo.weight": torch.zeros(2, 2), "head.weight": torch.zeros(5, 4)})
    msg = str(err.value)
    assert "matches no registered model architecture" in msg
    assert "head.weight (5, 4)" in msg and "rwkv5" in msg


def test_load_model_names_missing_keys():
    sd = perturbed()
    del sd["blocks.1.ffn.value.weight"]
    with pytest.raises(ModelError, match="missing: blocks.1.ffn.value.weight"):
        load_model(sd)


def test_load_model_rejects_conflicting_dim_att():
    with pytest.raises(ModelError, match="dim_att 128"):
        load_model(perturbed(), dim_att=192)


def test_load_from_file_roundtrip_strict(tmp_path):
    sd = perturbed(dtype=torch.bfloat16)
    save_state_dict(sd, tmp_path / "m.pth")
    model = load_model(tmp_path / "m.pth", dtype="fp32")
    assert isinstance(model, RWKV5)
    assert model.emb.weight.dtype == torch.float32
    own = model.state_dict()
    assert list(own) == list(x052_shapes(2, 128, 300))
    assert all(torch.equal(own[k], sd[k].float()) for k in sd)
    # a plain torch module built the official way loads it with strict=True
    fresh = RWKV5(2, 128, 300)
    fresh.load_state_dict(sd, strict=True)


def test_zero_state_layout():
    model = load_model(perturbed(2, 128, 300))
    state = model.zero_state(3)
    assert len(state) == 6
    assert [tuple(s.shape) for s in state[:3]] == [(3, 128), (3, 2, 64, 64), (3, 128)]
    assert state[1].dtype == torch.float32 and state[0].dtype == model.emb.weight.dtype
    assert all(torch.count_nonzero(s) == 0 for s in state)


def test_chunked_forward_equals_one_pass():
    model = load_model(perturbed(2, 128, 300)).eval()
    idx = torch.randint(0, 300, (2, 45), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, full_state = model(idx)
        parts, state = [], None
        for a, b in ((0, 7), (7, 8), (8, 40), (40, 45)):  # odd sizes, a 1-token chunk too
            out, state = model(idx[:, a:b], state)
            parts.append(out)
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-4)
    for s, f in zip(state, full_state):
        assert torch.allclose(s, f, atol=1e-4)


def test_registry_kernel_matches_recurrent_spec():
    sd = perturbed(2, 128, 300)
    idx = torch.randint(0, 300, (1, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        auto, _ = load_model(sd)(idx)
        ref, _ = load_model(sd, kernel=RecurrentKernel())(idx)
    assert torch.allclose(auto, ref, atol=1e-4)


def test_unknown_kernel_name_is_a_clear_error():
    from rwkv_plug.core.errors import UnknownNameError

    model = load_model(perturbed(), kernel="torhc")
    with pytest.raises(UnknownNameError, match="Did you mean 'torch'"):
        model(torch.zeros(1, 3, dtype=torch.long))


def test_grad_cp_gives_the_same_gradients():
    sd = perturbed(2, 128, 300)
    idx = torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(2))
    grads = []
    for cp in (False, True):
        model = load_model(sd, grad_cp=cp).train()
        logits, _ = model(idx)
        torch.nn.functional.cross_entropy(logits[0], idx[0]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_gradient_flows_into_the_incoming_state():
    model = load_model(perturbed(2, 128, 300))
    state = tuple(s.clone().requires_grad_() for s in model.zero_state(1))
    logits, _ = model(torch.tensor([[1, 2, 3]]), state)
    logits.sum().backward()
    assert all(s.grad is not None and torch.count_nonzero(s.grad) > 0 for s in state)


def test_dropout_only_in_training_mode():
    sd = perturbed(2, 128, 300)
    idx = torch.tensor([[5, 6, 7, 8]])
    plain = load_model(sd).eval()
    dropped = load_model(sd, dropout=0.5)
    with torch.no_grad():
        base, _ = plain(idx)
        assert torch.allclose(dropped.eval()(idx)[0], base)
        torch.manual_seed(0)
        assert not torch.allclose(dropped.train()(idx)[0], base)


def test_bf16_model_runs_and_keeps_fp32_wkv_state():
    model = load_model(perturbed(2, 128, 300), dtype=torch.bfloat16)
    logits, state = model(torch.tensor([[1, 2, 3, 4]]))
    assert logits.dtype == torch.bfloat16 and state[1].dtype == torch.float32
    assert state[0].dtype == torch.bfloat16 and math.isfinite(float(logits.detach().float().sum()))


def test_autocast_bf16_resolves_a_bf16_kernel_and_keeps_state_dtypes():
    model = load_model(perturbed(2, 128, 300))
    idx = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full, _ = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, state = model(idx)
    assert ("cpu", torch.bfloat16, False) in model._kernels  # (device, dtype, resets)
    assert [s.dtype for s in state] == [s.dtype for s in model.zero_state(1)]
    assert (mixed.float() - full).abs().max() < 0.1  # bf16 rounding only


def test_model_pickles_without_resolved_kernels():
    import pickle

    model = load_model(perturbed(2, 128, 300))
    idx = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        before, _ = model(idx)
        clone = pickle.loads(pickle.dumps(model))  # e.g. ddp_spawn sends the module
        assert clone._kernels == {}
        assert torch.equal(clone(idx)[0], before)


def test_chunked_backprop_through_carried_state_equals_full_pass():
    sd = perturbed(2, 128, 300)
    idx = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(5))

    def grads(bounds):
        model = load_model(sd)
        state, loss = None, 0.0
        for a, b in bounds:
            logits, state = model(idx[:, a:b], state)
            loss = loss + torch.nn.functional.cross_entropy(
                logits.reshape(-1, 300), idx[:, a:b].reshape(-1), reduction="sum"
            )
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    full = grads([(0, 40)])
    chunked = grads([(0, 13), (13, 14), (14, 40)])
    for name, g in full.items():
        assert torch.allclose(chunked[name], g, rtol=1e-4, atol=1e-5), name
