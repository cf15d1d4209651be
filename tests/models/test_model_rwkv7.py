"""The RWKV-7 model: x070 layout, detection, init, math, state and chunking, exact BPTT."""

from __future__ import annotations

import math

import pytest
import torch

from rwkv_plug.core.errors import ModelError
from rwkv_plug.models import load_model
from rwkv_plug.models.arch import RWKV5Arch
from rwkv_plug.models.arch7 import RWKV7Arch, default_lora, x070_shapes
from rwkv_plug.models.init import init_state_dict as init_x052
from rwkv_plug.models.init7 import init_state_dict
from rwkv_plug.models.io import save_state_dict
from rwkv_plug.models.loading import detect_arch
from rwkv_plug.models.rwkv7 import LoraDims
from rwkv_plug.training.bptt import BpttSettings, sequence_loss
from rwkv_plug.training.loss import chunk_loss

from test_model_files import invoke

TINY = LoraDims(decay=32, a=16, value=8, gate=24)  # all different: a swapped width fails the layout


def perturbed(n_layer=2, n_embd=128, vocab=64, seed=0, lora=TINY, dtype=torch.float64):
    """An init state dict with noise on every tensor, so nothing is trivially zero."""
    sd = init_state_dict(n_layer, n_embd, vocab, seed=seed, lora=lora, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    return {k: (v + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64)).to(dtype) for k, v in sd.items()}


# -- an independent per-token implementation, straight from the math (docs/model_files.md) --------

def _ln(x, w, b, eps=1e-5):
    mu = x.mean()
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean() + eps) * w + b


def spec_forward(sd: dict, tokens: list[int]) -> torch.Tensor:
    """Logits (T, V) for one row, token by token, head by head, in fp64."""
    sd = {k: v.double() for k, v in sd.items()}
    L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    V, C = sd["emb.weight"].shape
    N = 64
    H = C // N
    prev_att = [torch.zeros(C, dtype=torch.float64) for _ in range(L)]
    prev_ffn = [torch.zeros(C, dtype=torch.float64) for _ in range(L)]
    S = [[torch.zeros(N, N, dtype=torch.float64) for _ in range(H)] for _ in range(L)]
    out = []
    for tok in tokens:
        x = _ln(sd["emb.weight"][tok], sd["blocks.0.ln0.weight"], sd["blocks.0.ln0.bias"])
        v_first = None
        for l in range(L):
            p = lambda name: sd[f"blocks.{l}.{name}"].reshape(-1) if sd[f"blocks.{l}.{name}"].dim() != 2 \
                else sd[f"blocks.{l}.{name}"]  # noqa: E731
            xa = _ln(x, p("ln1.weight"), p("ln1.bias"))
            d = prev_att[l] - xa
            prev_att[l] = xa
            mix = {m: xa + d * p(f"att.x_{m}") for m in "rwkvag"}
            r = p("att.receptance.weight") @ mix["r"]
            k = p("att.key.weight") @ mix["k"]
            v = p("att.value.weight") @ mix["v"]
            w = torch.exp(-math.exp(-0.5) * torch.sigmoid(
                p("att.w0") + torch.tanh(mix["w"] @ p("att.w1")) @ p("att.w2")))
            a = torch.sigmoid(p("att.a0") + (mix["a"] @ p("att.a1")) @ p("att.a2"))
            g = torch.sigmoid(mix["g"] @ p("att.g1")) @ p("att.g2")
            if l == 0:
                v_first = v
            else:
                v = v + (v_first - v) * torch.sigmoid(p("att.v0") + (mix["v"] @ p("att.v1")) @ p("att.v2"))
            kk_all = k * p("att.k_k")
            k = k * (1 + (a - 1) * p("att.k_a"))
            y = torch.zeros(C, dtype=torch.float64)
            for h in range(H):
                sl = slice(h * N, (h + 1) * N)
                kk = kk_all[sl] / kk_all[sl].norm().clamp(min=1e-12)
                Sh = S[l][h]
                Sh = Sh @ torch.diag(w[sl]) + torch.outer(Sh @ (-kk), kk * a[sl]) + torch.outer(v[sl], k[sl])
                S[l][h] = Sh
                yh = Sh @ r[sl]
                # GroupNorm over this head, eps 64e-5
                mu, var = yh.mean(), yh.var(unbiased=False)
                yh = (yh - mu) / torch.sqrt(var + 64e-5) * p("att.ln_x.weight")[sl] + p("att.ln_x.bias")[sl]
                y[sl] = yh + (r[sl] * k[sl] * sd[f"blocks.{l}.att.r_k"][h]).sum() * v[sl]
            x = x + p("att.output.weight") @ (y * g)
            xf = _ln(x, p("ln2.weight"), p("ln2.bias"))
            kf = xf + (prev_ffn[l] - xf) * p("ffn.x_k")
            prev_ffn[l] = xf
            x = x + p("ffn.value.weight") @ torch.relu(p("ffn.key.weight") @ kf) ** 2
        out.append(sd["head.weight"] @ _ln(x, sd["ln_out.weight"], sd["ln_out.bias"]))
    return torch.stack(out)


def test_model_matches_a_per_token_implementation_of_the_math_fp64():
    sd = perturbed()
    model = load_model(sd, dtype=torch.float64).eval()
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, _ = model(tokens)
    for row in range(2):
        want = spec_forward(sd, tokens[row].tolist())
        assert logits[row].std() > 0.1
        assert (logits[row] - want).abs().max() < 1e-10, row


def test_chunks_with_carried_state_equal_one_pass():
    model = load_model(perturbed(dtype=torch.float32)).eval()
    ids = torch.randint(0, 64, (2, 23), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole, end = model(ids)
        state, parts = None, []
        for a, b in ((0, 5), (5, 6), (6, 23)):
            got, state = model(ids[:, a:b], state)
            parts.append(got)
    assert (torch.cat(parts, 1) - whole).abs().max() < 1e-5
    assert all((s - e).abs().max() < 1e-5 for s, e in zip(state, end))
    # layout: per layer att shift (B, C), wkv (B, H, N, N) fp32, ffn shift (B, C)
    assert [tuple(s.shape) for s in state[:3]] == [(2, 128), (2, 2, 64, 64), (2, 128)]
    assert state[1].dtype == torch.float32


def test_grad_cp_gives_the_same_gradients():
    sd = perturbed(n_embd=64, vocab=48, dtype=torch.float32)
    ids = torch.randint(0, 48, (2, 7), generator=torch.Generator().manual_seed(6))
    grads = []
    for cp in (False, True):
        model = load_model(sd, grad_cp=cp).train()
        model(ids)[0].square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


# -- exact BPTT ---------------------------------------------------------------------------------------

def test_exact_bptt_gradients_equal_the_full_sequence_fp64():
    model = load_model(perturbed(n_embd=64, vocab=48), dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 48, (2, 3 * 4 + 1), generator=g)
    mask = (torch.rand(2, 3 * 4 + 1, generator=g) > 0.3).long()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}  # unused at layer 0

    model.zero_grad()
    tmask = mask[:, 1:]
    logits, _ = model(ids[:, :-1])
    chunk_loss(logits, ids[:, 1:], tmask, tmask.sum().double().clamp(min=1), 2).backward()
    full = {n: p.grad.clone() for n, p in trainable.items()}

    model.zero_grad()
    out = sequence_loss(model, ids, mask, BpttSettings(ctx_len=4), train=True)
    out.loss.backward()
    assert out.chunks == 3
    for name, p in trainable.items():
        scale = full[name].abs().max().clamp(min=1e-30)
        assert full[name].abs().max() > 0 or name.endswith(("att.w1", "att.a1", "att.g1")), name
        assert ((p.grad - full[name]).abs().max() / scale) < 1e-10, name


# -- layout, detection, init ---------------------------------------------------------------------------

def test_layout_reads_every_size_from_the_tensors():
    sd = init_state_dict(3, 128, 100, lora=TINY, dim_ffn=320, seed=0)
    dims = RWKV7Arch.check_complete(sd)
    assert dims == {"n_layer": 3, "n_embd": 128, "vocab_size": 100, "dim_ffn": 320, "lora": TINY}
    assert {k: tuple(v.shape) for k, v in sd.items()} == x070_shapes(3, 128, 100, TINY, 320)
    assert sd["blocks.2.att.v1"].shape == (128, 8) and sd["blocks.0.att.g2"].shape == (24, 128)
    model = load_model(sd)
    assert (model.n_layer, model.n_embd, model.vocab_size, model.dim_ffn, model.lora) == (3, 128, 100, 320, TINY)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())


def test_default_low_rank_widths_are_the_released_ones():
    assert default_lora(768) == LoraDims(64, 64, 32, 128)  # 0.1B G1
    assert default_lora(2048) == LoraDims(96, 96, 64, 256)  # 1.5B


@pytest.mark.parametrize("bad, named", [
    (dict(n_layer=0), "n_layer"), (dict(n_embd=100), "n_embd"), (dict(vocab_size=0), "vocab_size"),
    (dict(lora=LoraDims(32, 0, 32, 32)), "the a low-rank width"),
])
def test_init_rejects_bad_sizes(bad, named):
    with pytest.raises(ModelError, match=named):
        init_state_dict(**(dict(n_layer=1, n_embd=64, vocab_size=10) | bad))


def test_detection_does_not_confuse_v5_v6_and_v7():
    v7 = init_state_dict(1, 64, 10, seed=0)
    v5 = init_x052(1, 64, 10, seed=0)
    assert RWKV7Arch.detect(v7) and not RWKV5Arch.detect(v7)
    assert RWKV5Arch.detect(v5) and not RWKV7Arch.detect(v5)
    v6 = {**v5, "blocks.0.att.time_maa_x": torch.zeros(1, 1, 64)}
    assert not RWKV7Arch.detect(v6) and not RWKV5Arch.detect(v6)
    assert detect_arch(v7).name == "rwkv7" and detect_arch(v5).name == "rwkv5"


def test_init_formulas():
    L, C = 4, 128
    sd = init_state_dict(L, C, 300, seed=0, dtype=torch.float64)
    l, n = 2, 77
    r0, r1 = l / (L - 1), 1 - l / L
    ddd, lin = n / C, n / (C - 1) - 0.5
    z = ((n % 64) - 31.5) / 31.5
    zz = z * abs(z)
    att = f"blocks.{l}.att."
    for m, p in zip("rwkvag", (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)):
        assert sd[att + f"x_{m}"][0, 0, n].item() == pytest.approx(1 - ddd ** (p * r1), rel=1e-12)
    assert sd[f"blocks.{l}.ffn.x_k"][0, 0, n].item() == pytest.approx(1 - ddd ** (r1**4), rel=1e-12)
    w0 = -6 + 6 * (n / (C - 1)) ** (1 + r0**0.3) + 0.5 + 2.5 * zz
    assert sd[att + "w0"][0, 0, n].item() == pytest.approx(w0, rel=1e-12)
    assert sd[att + "a0"][0, 0, n].item() == pytest.approx(-0.19 + 0.3 * zz + 0.4 * lin, rel=1e-12)
    assert sd[att + "v0"][0, 0, n].item() == pytest.approx(0.73 - 0.4 * lin, rel=1e-12)
    assert sd[att + "k_k"][0, 0, n].item() == pytest.approx(0.71 - 0.1 * lin, rel=1e-12)
    assert torch.all(sd[att + "k_a"] == 1.02) and torch.all(sd[att + "r_k"] == -0.04)
    assert torch.allclose(sd[att + "ln_x.weight"], torch.full((C,), ((l + 1) / L) ** 0.7, dtype=torch.float64))
    for zero in ("att.output.weight", "ffn.value.weight", "att.w1", "att.a1", "att.v1", "att.g1"):
        assert torch.count_nonzero(sd[f"blocks.{l}.{zero}"]) == 0, zero
    w2 = sd[att + "w2"]  # (Dw, C), orthogonal rows x 0.1
    assert torch.allclose(w2 @ w2.T, 0.01 * torch.eye(w2.shape[0], dtype=torch.float64), atol=1e-7)  # fp32 made
    key = sd[att + "key.weight"]
    assert torch.allclose(key @ key.T, 0.01 * torch.eye(C, dtype=torch.float64), atol=1e-7)
    rec = sd[att + "receptance.weight"]
    assert torch.allclose(rec @ rec.T, torch.eye(C, dtype=torch.float64), atol=1e-5)
    head = sd["head.weight"]
    assert torch.allclose(head.T @ head, torch.eye(C, dtype=torch.float64) * 0.25 * 300 / C, atol=1e-5)
    assert sd["emb.weight"].abs().max() <= 1e-4


def test_param_groups_follow_the_official_x070_recipe():
    model = load_model(init_state_dict(2, 64, 50, seed=0))
    named = dict(model.named_parameters())
    groups = {g["name"]: g for g in RWKV7Arch.param_groups(model.named_parameters(), 0.001, True)}
    names = {k: {n for n, p in named.items() if any(p is q for q in g["params"])} for k, g in groups.items()}
    assert names["2x"] == {"blocks.0.att.w0", "blocks.1.att.w0"} and groups["2x"]["lr_scale"] == 2.0
    assert names["decay"] == {n for n in named if n.endswith(".weight") and named[n].dim() == 2}
    assert "blocks.1.att.w1" in names["1x"] and "blocks.1.att.r_k" in names["1x"]
    assert groups["decay"]["weight_decay"] == 0.001 and groups["1x"]["weight_decay"] == 0.0
    assert not any("blocks.0.att.v1" in ns for ns in names.values())  # frozen: in no group
    assert set(groups) == {"1x", "2x", "decay"}
    # without layerwise_lr w0 learns at 1x; the decay stays on the matrices only
    flat = {g["name"]: g for g in RWKV7Arch.param_groups(model.named_parameters(), 0.001, False)}
    assert set(flat) == {"1x", "decay"} and len(flat["decay"]["params"]) == len(groups["decay"]["params"])


# -- files: a released-size checkpoint, malformed files, the CLI ---------------------------------------

@pytest.mark.slow
def test_a_g1_shaped_checkpoint_loads_trains_a_step_and_exports_the_same_keys(tmp_path):
    from rwkv_plug.models.export import export_checkpoint
    from rwkv_plug.training.optim import LrSchedule, build_optimizer

    # the released 0.1B's blocks (12 x 768 and its LoRA sizes) with a vocabulary of 4096, not 65536:
    # no step here depends on the vocabulary, and its embedding and head were 100M of 190M parameters
    shapes = x070_shapes(12, 768, 4096, LoraDims(64, 64, 32, 128))
    g = torch.Generator().manual_seed(0)
    sd = {k: (0.02 * torch.randn(s, generator=g)).to(torch.bfloat16) for k, s in shapes.items()}
    for k in sd:  # norms near 1 so the forward stays finite
        if ".ln" in k and k.endswith(".weight") or k.startswith("ln_out.weight"):
            sd[k] = sd[k] + 1
    save_state_dict(sd, tmp_path / "g1.pth")
    model = load_model(tmp_path / "g1.pth")
    assert model.lora == LoraDims(64, 64, 32, 128) and (model.n_layer, model.n_embd) == (12, 768)
    m = {"weight_decay": 0.001, "layerwise_lr": True, "beta1": 0.9, "beta2": 0.99, "adam_eps": 1e-18}
    opt, _ = build_optimizer(model, m, LrSchedule(1e-3, 1e-3), RWKV7Arch)
    before = model.blocks[5].att.w0.detach().clone()
    ids = torch.randint(0, 4096, (1, 5), generator=g)
    out = sequence_loss(model, ids, torch.ones_like(ids), BpttSettings(ctx_len=2), train=True)
    out.loss.backward()
    opt.step()
    assert torch.isfinite(out.loss) and not torch.equal(before, model.blocks[5].att.w0)
    ckpt = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
    torch.save({"state_dict": {f"model.{k}": v for k, v in ckpt.items()}}, tmp_path / "last.ckpt")
    del model, opt, ckpt
    _, path, dims = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "out.pth")
    out_sd = torch.load(path, weights_only=True)
    assert list(out_sd) == list(sd)  # the same keys, in the official order
    assert {k: tuple(v.shape) for k, v in out_sd.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    assert all(v.dtype == torch.bfloat16 for v in out_sd.values())
    assert dims["arch"] == "rwkv7" and dims["lora"] == LoraDims(64, 64, 32, 128)


@pytest.mark.parametrize("damage, named", [
    ("drop", "missing: blocks.1.att.k_a"),
    ("shape", "wrong shape: blocks.0.att.a2 (16, 128) (expected (15, 128))"),
    ("extra", "unexpected: blocks.1.att.gate.weight"),
    ("no_g1", "lacks a key needed to read its x070 sizes: 'blocks.N.att.g1'"),
])
def test_a_malformed_x070_file_is_one_clear_error_naming_the_key(tmp_path, capsys, damage, named):
    sd = init_state_dict(2, 128, 64, lora=LoraDims(32, 15, 8, 24), seed=0)
    if damage == "drop":
        del sd["blocks.1.att.k_a"]
    elif damage == "shape":
        sd["blocks.0.att.a2"] = torch.zeros(16, 128)
    elif damage == "extra":
        sd["blocks.1.att.gate.weight"] = torch.zeros(128, 128)  # an x052 key
    else:  # no layer says how wide the gate is
        del sd["blocks.0.att.g1"], sd["blocks.1.att.g1"]
    save_state_dict(sd, tmp_path / "bad.pth")
    for args in (["generate", tmp_path / "bad.pth", "--prompt", "hi", "--tokenizer", "world"],
                 ["export", tmp_path / "bad.pth", tmp_path / "out.pth"]):
        code, _, err = invoke(capsys, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert named in lines[0], lines[0]
        assert not (tmp_path / "out.pth").exists()


def test_init_model_arch_rwkv7_and_list_models(tmp_path, capsys):
    out = tmp_path / "m.pth"
    code, stdout, err = invoke(capsys, "init-model", "--arch", "rwkv7", "--n_layer", "2", "--n_embd", "128",
                               "--vocab_size", "100", "--lora-gate", "64", "--seed", "1", out)
    assert code == 0, err
    assert "RWKV-7 (x070) L2-D128, vocab 100" in stdout
    sd = torch.load(out, weights_only=True)
    want = LoraDims(**{**vars(default_lora(128)), "gate": 64})
    assert RWKV7Arch.check_complete(sd)["lora"] == want
    # the default stays rwkv5; x070 flags are refused there; unknown architectures are named
    code, _, _ = invoke(capsys, "init-model", "--n_layer", "1", "--n_embd", "64", "--vocab_size", "10", tmp_path / "5.pth")
    assert code == 0 and RWKV5Arch.detect(torch.load(tmp_path / "5.pth", weights_only=True))
    code, _, err = invoke(capsys, "init-model", "--n_layer", "1", "--n_embd", "64", "--lora-a", "32", tmp_path / "x.pth")
    assert code != 0 and "--lora-a only apply to --arch rwkv7" in err
    code, _, err = invoke(capsys, "init-model", "--arch", "rwkv8", "--n_layer", "1", "--n_embd", "64", tmp_path / "y.pth")
    assert code != 0 and "rwkv7" in err and not (tmp_path / "y.pth").exists()
    # --skip-if-exists names a file of the other architecture
    code, _, err = invoke(capsys, "init-model", "--n_layer", "2", "--n_embd", "128", "--vocab_size", "100",
                          "--skip-if-exists", out)
    assert code == 0 and "holds an rwkv7 model (not rwkv5)" in err
    code, stdout, _ = invoke(capsys, "list-models")
    assert code == 0 and "rwkv7" in stdout and "rwkv5" in stdout
    code, stdout, _ = invoke(capsys, "init-model", "--help")
    assert "rwkv5" in stdout and "rwkv7" in stdout
