"""The wkv7 op: the chunked torch kernel, Triton under the interpreter, the fla wrapper,
the conformance suite (which must be able to fail) and kernel selection."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rwkv_plug.core import plugins
from rwkv_plug.core.errors import KernelError
from rwkv_plug.core.hookspecs import hookimpl
from rwkv_plug.core.interfaces import Kernel, KernelCaps
from rwkv_plug.kernels import backend_fla
from rwkv_plug.kernels.backend_fla import FlaKernel
from rwkv_plug.kernels.backend_torch import TorchKernel
from rwkv_plug.kernels.conformance import check_kernel
from rwkv_plug.kernels.conformance_ops import DECAY_DEFAULT, DECAY_NEAR_0, DECAY_NEAR_1, OPS
from rwkv_plug.kernels.select import resolve_kernel
from rwkv_plug.kernels.wkv7.reference import wkv7_recurrent
from rwkv_plug.kernels.wkv7.torch_chunked import wkv7_chunked

ARGS = ("r", "w", "k", "v", "a", "b", "s0")


def _inputs(B=2, T=37, H=2, N=8, theta=DECAY_DEFAULT, seed=0):
    """fp64 model-like inputs (a = -kk, b = kk * gate) and upstream gradients."""
    return OPS["wkv7"].inputs(B, T, H, N, seed, theta=theta)


def _run(fn, x, dtype=torch.float64):
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    ins = [x[n].detach().to(dtype if n != "s0" else sdt).clone().requires_grad_() for n in ARGS]
    y, sT = fn(*ins)
    ((y.double() * x["gy"]).sum() + (sT.double() * x["gs"]).sum()).backward()
    return [y.detach().double(), sT.detach().double()] + [i.grad.double() for i in ins]


def _max_rel(got, ref):
    names = ("y", "sT") + tuple(f"d{n}" for n in ARGS)
    return {n: ((g - r).abs().max() / r.abs().max()).item() for n, g, r in zip(names, got, ref)}


# -- the chunked torch kernel ------------------------------------------------
@pytest.mark.parametrize("theta", [DECAY_DEFAULT, DECAY_NEAR_0, DECAY_NEAR_1],
                         ids=["default", "near0", "near1"])
@pytest.mark.parametrize("T, chunk", [(1, 16), (37, 16), (40, 8), (23, 5)])
def test_chunked_equals_the_reference_in_fp64(theta, T, chunk):
    # every output and all seven gradients, dw included, for decays down to ~1e-24
    x = _inputs(T=T, theta=theta)
    ref = _run(wkv7_recurrent, x)
    got = _run(lambda *a: wkv7_chunked(*a, chunk=chunk), x)
    errors = _max_rel(got, ref)
    assert max(errors.values()) < 1e-10, errors


def test_model_range_decays_take_the_factored_form_and_tiny_ones_the_product_form(monkeypatch):
    # both forms run, on the decays each is meant for, and agree with the reference in fp32
    import rwkv_plug.kernels.wkv7.torch_chunked as tc

    calls = []
    for name in ("_within_chunk_factored", "_within_chunk"):
        real = getattr(tc, name)
        monkeypatch.setattr(tc, name, lambda *a, _n=name, _f=real: calls.append(_n) or _f(*a))
    model_like = _inputs(T=37, theta=(-6.0, -0.5))  # RWKV-7's range: w >= exp(-e^-0.5)
    assert model_like["w"].min() >= 0.54
    tiny = _inputs(T=37, theta=DECAY_NEAR_0)
    for x, form in ((model_like, "_within_chunk_factored"), (tiny, "_within_chunk")):
        calls.clear()
        got = _run(tc.wkv7_chunked, x, torch.float32)
        assert set(calls) == {form}
        errors = _max_rel(got, _run(wkv7_recurrent, x))
        assert max(errors.values()) < 1e-5, (form, errors)


def test_near_zero_decays_are_exact_in_fp32_without_clamping():
    x = _inputs(T=40, theta=(2.0, 4.4))  # w from 6e-4 down to ~6e-36
    assert x["w"].min() < 1e-30
    ref = _run(wkv7_recurrent, x)
    got = _run(wkv7_chunked, x, torch.float32)
    assert all(torch.isfinite(g).all() for g in got)
    errors = _max_rel(got, ref)
    assert max(errors.values()) < 1e-5, errors
    # a clamp of the decay at 0.005 (the earlier trainer's fix for overflow) is visible
    clamped = dict(x, w=x["w"].clamp_min(0.005))
    assert (_run(wkv7_recurrent, clamped)[1] - ref[1]).abs().max() > 1e-3


def test_bf16_inputs_compute_in_fp32_and_autocast_does_not_lower_it():
    x = _inputs(T=33)
    low = {n: x[n].to(torch.bfloat16) for n in ("r", "k", "v", "a", "b")}
    y, sT = wkv7_chunked(low["r"], x["w"].float(), low["k"], low["v"], low["a"], low["b"],
                         x["s0"].float())
    assert y.dtype == torch.bfloat16 and sT.dtype == torch.float32
    y_ref, s_ref = wkv7_recurrent(*(low[n].double() if n in low else x[n].float().double()
                                    for n in ARGS))
    torch.testing.assert_close(sT.double(), s_ref, rtol=1e-4, atol=1e-4)
    x32 = [x[n].float() for n in ARGS]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto, s_auto = TorchKernel().wkv7(*x32)
    y32, s32 = wkv7_chunked(*x32)
    assert y_auto.dtype == torch.float32
    torch.testing.assert_close(y_auto, y32)
    torch.testing.assert_close(s_auto, s32)


def test_torch_kernel_uses_the_chunked_form_not_the_reference(monkeypatch):
    from rwkv_plug.kernels.wkv7 import reference

    def forbidden(*_):
        raise AssertionError("the per-step reference ran")

    monkeypatch.setattr(reference, "wkv7_recurrent", forbidden)
    x = _inputs(T=20)
    y, _ = TorchKernel().wkv7(*(x[n] for n in ARGS))
    assert y.shape == (2, 20, 2, 8)


# -- conformance --------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_kernel_passes_wkv7_conformance(dtype):
    report = check_kernel(TorchKernel(), dtype=dtype, op="wkv7", head_size=16, T=40)
    assert report.passed, report.format()
    names = {c.name for c in report.checks}
    assert {"forward+backward", "s0_grad", "sT_grad_only", "chained", "batch_rows", "T=1",
            "decay_near_0", "decay_near_1"} <= names
    assert any(n.startswith("ragged_T=") for n in names)
    assert not report.skipped and report.op == "wkv7"


def _correct(r, w, k, v, a, b, s0):
    return wkv7_chunked(r, w, k, v, a, b, s0)


class _Broken(Kernel):
    """A wkv7 kernel with one deliberate bug, chosen by ``bug``."""

    name = "broken"
    caps = KernelCaps(dtypes=("float32", "float64"), devices=("cpu",), ops=("wkv7",))
    bug = ""

    def wkv7(self, r, w, k, v, a, b, s0):
        if self.bug == "no_rank_one":  # forgets the (S a) b^T term
            return _correct(r, w, k, v, a * 0, b, s0)
        if self.bug == "transposed_state":  # reads and writes the state as [k, v]
            y, sT = _correct(r, w, k, v, a, b, s0.transpose(-1, -2))
            return y, sT.transpose(-1, -2)
        if self.bug == "detached_state":
            y, sT = _correct(r, w, k, v, a, b, s0)
            return y, sT.detach()
        if self.bug == "shared_s0":  # row 0's state for every row
            return _correct(r, w, k, v, a, b, s0[:1].expand_as(s0))
        if self.bug == "clamped_decay":
            return _correct(r, w.clamp_min(0.005), k, v, a, b, s0)
        return _correct(r, w, k, v, a, b, s0)


@pytest.mark.parametrize("bug, must_fail", [
    ("no_rank_one", {"forward+backward", "chained", "batch_rows"}),
    ("transposed_state", {"forward+backward", "s0_grad", "sT_grad_only", "chained"}),
    ("detached_state", {"sT_grad_only", "chained"}),
    ("shared_s0", {"batch_rows", "forward+backward"}),
    ("clamped_decay", {"decay_near_0"}),
])
def test_conformance_fails_a_wrong_wkv7(bug, must_fail):
    kernel = _Broken()
    kernel.bug = bug
    report = check_kernel(kernel, dtype=torch.float64, op="wkv7", head_size=8, T=16)
    failed = {c.name for c in report.checks if not c.passed}
    assert not report.passed and must_fail <= failed, report.format()


def test_a_skipped_check_is_reported_as_skipped_never_as_passed():
    class OneTokenChunks(_Broken):  # every T is a whole number of chunks: ragged T cannot apply
        chunk_size = 1

    report = check_kernel(OneTokenChunks(), dtype=torch.float64, op="wkv7", head_size=8, T=8)
    ragged = next(c for c in report.checks if c.name.startswith("ragged_T="))
    assert ragged.skipped and not ragged.passed and ragged.mark == "skip"
    assert report.skipped == [ragged.name]
    assert report.passed  # the checks that ran passed
    text = report.format()
    assert "(1 skipped)" in text and f"skip {ragged.name}" in text


def test_conformance_refuses_an_unknown_op_and_reports_a_missing_method():
    with pytest.raises(ValueError, match="unknown op 'wkv9'"):
        check_kernel(TorchKernel(), op="wkv9")

    class Wkv5Only(Kernel):
        name = "wkv5-only"

        def wkv5(self, *args):
            raise AssertionError

    report = check_kernel(Wkv5Only(), op="wkv7", head_size=8, T=8)
    assert not report.passed and "has no wkv7 method" in report.format()


# -- selection ----------------------------------------------------------------
class _FastWkv5Only(Kernel):
    """A fast CPU kernel that implements only wkv5."""

    name = "fast-wkv5"
    caps = KernelCaps(dtypes=("float32",), devices=("cpu",), speed_rank=80, ops=("wkv5",))

    def wkv5(self, *args):  # correct: auto runs its self-check before choosing it
        return TorchKernel().wkv5(*args)


class _OneTokenChunks(Kernel):
    """A correct wkv7 kernel whose chunk is one token: the ragged-T check cannot apply."""

    name = "one-token"
    caps = KernelCaps(dtypes=("float32",), devices=("cpu",), speed_rank=-1, ops=("wkv7",))
    chunk_size = 1

    def wkv7(self, *args):
        return wkv7_chunked(*args)


class _Plugin:
    @staticmethod
    @hookimpl
    def register_kernels():
        return [_FastWkv5Only, _OneTokenChunks]


@pytest.fixture
def with_wkv5_only_kernel():
    p = plugins.configure("none")
    p.register(_Plugin, "wkv7-test-kernels")
    yield p
    p.unregister("wkv7-test-kernels")


@pytest.mark.slow
def test_selection_honours_the_ops_a_kernel_lists(with_wkv5_only_kernel):
    with pytest.raises(KernelError, match="model.kernel 'cuda' does not implement wkv7"):
        resolve_kernel("cuda", "cpu", torch.float32, op="wkv7")
    with pytest.raises(KernelError, match="'fast-wkv5' does not implement wkv7"):
        resolve_kernel("fast-wkv5", "cpu", torch.float32, op="wkv7")
    assert isinstance(resolve_kernel("auto", "cpu", torch.float32, op="wkv5"), _FastWkv5Only)
    chosen = resolve_kernel("auto", "cpu", torch.float32, op="wkv7")
    assert "wkv7" in chosen.caps.ops and isinstance(chosen, TorchKernel)
    with pytest.raises(KernelError, match="model.kernel 'fla' is not available here"):
        resolve_kernel("fla", "cuda", torch.bfloat16, op="wkv7")


def test_check_kernels_prints_a_skipped_check_as_skipped(with_wkv5_only_kernel):
    from click.testing import CliRunner

    from rwkv_plug.core.cli import cli

    result = CliRunner().invoke(cli, ["check-kernels", "--kernel", "one-token"])
    assert result.exit_code == 0, result.output
    assert "one-token  wkv7  PASS  [cpu, float32]" in result.output and "(1 skipped)" in result.output
    assert "    skip ragged_T=5 " in result.output  # listed without -v, never as "ok"


# -- the fla wrapper, against a stand-in for fla's chunk_rwkv7 -----------------
def _fake_chunk_rwkv7(transposes: bool):
    """fla's ``chunk_rwkv7`` conventions, computed per step: state [k, v], log decay, scale.

    With ``transposes=False`` it keeps the state as [v, k] (a wrong wrapper's view).
    """

    def chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False):
        assert output_final_state and scale == 1.0
        assert (w <= 0).all(), "fla takes the decay in log space"
        B, T, H, K = r.shape
        S = initial_state.clone()  # (B, H, K, V) in fla's layout
        assert S.shape == (B, H, K, v.shape[-1])
        ys = []
        for t in range(T):
            rt, wt, kt, vt, at, bt = (x[:, t].to(S.dtype) for x in (r, w, k, v, a, b))
            if transposes:  # S' = diag(e^w) S + b (a^T S) + k v^T ;  o = S'^T r
                aS = torch.einsum("bhk,bhkv->bhv", at, S)
                S = wt.exp().unsqueeze(-1) * S + bt.unsqueeze(-1) * aS.unsqueeze(-2) \
                    + kt.unsqueeze(-1) * vt.unsqueeze(-2)
                ys.append(torch.einsum("bhk,bhkv->bhv", rt, S))
            else:
                Sa = torch.einsum("bhvk,bhk->bhv", S, at)
                S = S * wt.exp().unsqueeze(-2) + Sa.unsqueeze(-1) * bt.unsqueeze(-2) \
                    + vt.unsqueeze(-1) * kt.unsqueeze(-2)
                ys.append(torch.einsum("bhvk,bhk->bhv", S, rt))
        return torch.stack(ys, dim=1).to(r.dtype), S

    return chunk_rwkv7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fla_wrapper_maps_layout_and_arguments(monkeypatch, dtype):
    monkeypatch.setattr(backend_fla, "_chunk_rwkv7", lambda: _fake_chunk_rwkv7(transposes=True))
    report = check_kernel(FlaKernel(), dtype=dtype, op="wkv7", head_size=8, T=20)
    assert report.passed, report.format()


def test_fla_wrapper_test_catches_a_missing_transpose(monkeypatch):
    # the same stand-in in our layout: the wrapper's transposes then scramble the state
    monkeypatch.setattr(backend_fla, "_chunk_rwkv7", lambda: _fake_chunk_rwkv7(transposes=False))
    report = check_kernel(FlaKernel(), dtype=torch.float64, op="wkv7", head_size=8, T=20)
    assert not report.passed and "s0_grad" in {c.name for c in report.checks if not c.passed}


def test_fla_availability_says_why(monkeypatch):
    assert FlaKernel.caps.ops == ("wkv7",)
    real = importlib.util.find_spec

    def fla_installed(yes: bool):
        return lambda name, *a: (object() if yes else None) if name == "fla" else real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", fla_installed(False))
    ok, reason = FlaKernel.availability()
    assert not ok and "pip install 'rwkv-plug[fla]'" in reason
    monkeypatch.setattr(importlib.util, "find_spec", fla_installed(True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert FlaKernel.availability() == (False, "no CUDA device (flash-linear-attention's kernels need one)")


# -- triton, under the interpreter ---------------------------------------------
@pytest.mark.slow
def test_triton_wkv7_conformance_under_the_interpreter():
    pytest.importorskip("triton", reason="triton is an optional extra: pip install 'rwkv-plug[triton]'")
    code = """
        import json, torch
        from rwkv_plug.kernels.conformance import check_kernel
        from rwkv_plug.kernels.select import resolve_kernel
        out = {}
        for dt in (torch.float64,):  # fp32 runs through check-kernels in test_kernels_triton.py
            kernel = resolve_kernel("triton", "cpu", dt, op="wkv7")
            rep = check_kernel(kernel, device="cpu", dtype=dt, heads=1, head_size=16, T=24, op="wkv7")
            out[str(dt)] = [rep.passed, rep.format()]
        print(json.dumps(out))
    """
    env = dict(os.environ, TRITON_INTERPRET="1", RWKV_PLUG_PLUGINS="none", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"torch.float64"}
    for passed, text in result.values():
        assert passed, text
        for check in ("s0_grad", "sT_grad_only", "chained", "batch_rows", "T=1", "ragged_T=35",
                      "decay_near_0", "decay_near_1"):
            assert f"ok   {check}" in text, text


@pytest.mark.slow
def test_triton_wkv7_compiles_for_ampere_and_hopper_without_a_gpu(tmp_path):
    pytest.importorskip("triton", reason="triton is an optional extra: pip install 'rwkv-plug[triton]'")
    # lowered all the way to a cubin by Triton's own toolchain, in a fresh cache
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), RWKV_PLUG_PLUGINS="none")
    code = ("from rwkv_plug.kernels.wkv7.triton_aot import main\n"
            "main(['80', 'bf16']); main(['90', 'bf16'])\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["sm_80", "bf16", "wkv7", "fwd"], ["sm_80", "bf16", "wkv7", "bwd"],
        ["sm_90", "bf16", "wkv7", "fwd"], ["sm_90", "bf16", "wkv7", "bwd"]]
    assert all(("REG:" in line or "cubin" in line) for line in lines), out.stdout
