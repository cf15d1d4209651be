"""The torch wkv5 kernel, the conformance helper, kernel selection and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from rwkv_plug.core import plugins
from rwkv_plug.core.cli import cli
from rwkv_plug.core.env import settings
from rwkv_plug.core.errors import KernelError, UnknownNameError
from rwkv_plug.core.hookspecs import hookimpl
from rwkv_plug.core.interfaces import Kernel, KernelCaps
from rwkv_plug.kernels.conformance import check_kernel
from rwkv_plug.kernels.wkv5.reference import wkv5_recurrent
from rwkv_plug.kernels.select import resolve_kernel
from rwkv_plug.kernels.backend_torch import TorchKernel
from rwkv_plug.kernels.wkv5.torch_chunked import wkv5_chunked

from conftest import run_cli


def _inputs(B=2, T=40, H=2, N=8, theta=(-6.0, 2.0), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=dtype) for _ in range(3))
    w = torch.exp(-torch.exp(torch.linspace(*theta, H * N, dtype=torch.float64))).view(H, N)
    u = torch.randn(H, N, generator=g, dtype=torch.float64)
    s0 = torch.randn(B, H, N, N, generator=g, dtype=torch.float64)
    return r, k, v, w, u, s0


# -- the torch kernel --------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_kernel_passes_conformance(dtype):
    report = check_kernel(TorchKernel(), dtype=dtype)
    assert report.passed, report.format()
    names = {c.name for c in report.checks}
    assert {"forward+backward", "s0_grad", "sT_grad_only", "chained", "batch_rows", "T=1"} <= names
    assert any(n.startswith("ragged_T=") for n in names)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunk_length_does_not_change_results(chunk):
    x = _inputs(T=37)
    y_ref, s_ref = wkv5_recurrent(*x)
    y, s = wkv5_chunked(*x, chunk=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


def test_very_fast_decays_are_exact_without_clamping():
    # w from exp(-exp(2)) ~ 6e-4 down to exp(-exp(4)) ~ 2e-24: the split
    # w^t * w^-s trick overflows here, and a clamp at 0.005 changes results.
    x64 = _inputs(T=70, theta=(2.0, 4.0))
    y_ref, s_ref = wkv5_recurrent(*x64)
    x32 = [t.float() for t in x64]
    x32 = [t.requires_grad_() for t in x32]
    y, s = wkv5_chunked(*x32)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, rtol=1e-4, atol=1e-4)
    (y.sum() + s.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in x32)
    # A clamped decay would give a visibly different state.
    clamped = wkv5_recurrent(*x64[:3], x64[3].clamp_min(0.005), *x64[4:])[1]
    assert (clamped - s_ref).abs().max() > 1e-3


def test_bf16_inputs_compute_in_fp32():
    r, k, v, w, u, s0 = _inputs(T=33)
    rb, kb, vb = (t.to(torch.bfloat16) for t in (r, k, v))
    y, sT = wkv5_chunked(rb, kb, vb, w.float(), u.float(), s0.float())
    assert y.dtype == torch.bfloat16 and sT.dtype == torch.float32
    y_ref, s_ref = wkv5_recurrent(*(t.double() for t in (rb, kb, vb)), w, u, s0)
    torch.testing.assert_close(sT.double(), s_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-2, atol=2e-2)


def test_autocast_does_not_lower_the_kernel_precision():
    x = [t.float() for t in _inputs(T=40)]
    y_ref, s_ref = wkv5_chunked(*x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = TorchKernel().wkv5(*x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s, s_ref)


@pytest.mark.parametrize("precision, dtype, expected", [
    ("fp32", torch.float32, "highest"), ("tf32", torch.float32, "high"),
    ("auto", torch.float32, "highest"), ("auto", torch.bfloat16, "high"), ("fp32", torch.bfloat16, "highest"),
])
def test_torch_kernel_runs_its_products_at_the_chosen_precision(precision, dtype, expected, monkeypatch):
    seen: list[str] = []
    matmul = torch.Tensor.__matmul__

    def recording(a, b):  # torch's fp32 matmul precision at every product, forward and backward
        seen.append(torch.get_float32_matmul_precision())
        return matmul(a, b)

    r, k, v, w, u, s0 = _inputs(T=40)
    r, k, v = (t.to(dtype).requires_grad_() for t in (r, k, v))
    w, u, s0 = (t.float().requires_grad_() for t in (w, u, s0))
    kernel = resolve_kernel("torch", "cpu", dtype, precision=precision)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # what the caller set must not leak in
    monkeypatch.setattr(torch.Tensor, "__matmul__", recording)
    try:
        y, sT = kernel.wkv5(r, k, v, w, u, s0)
        fwd = list(seen)
        (y.float().sum() + sT.sum()).backward()
        assert torch.get_float32_matmul_precision() == "medium"  # and is restored
    finally:
        torch.set_float32_matmul_precision(before)
    # forward: 3 products per chunk group (40 = 32 + a tail of 8); backward: 2 per product
    assert fwd == [expected] * 6
    assert seen[6:] == [expected] * 12


@pytest.mark.parametrize("precision, dtype, expected", [
    ("fp32", torch.float32, "ieee"), ("tf32", torch.float32, "tf32"), ("auto", torch.float32, "ieee"),
    ("auto", torch.float16, "tf32"), ("fp32", torch.bfloat16, "ieee"), ("tf32", torch.float64, "ieee"),
])
def test_triton_kernel_launches_with_the_chosen_dot_precision(precision, dtype, expected, monkeypatch):
    from rwkv_plug.kernels import backend_triton
    from rwkv_plug.kernels.wkv5 import triton as wkv5_triton

    launched: dict[str, str] = {}

    class Launcher:  # stands in for the jitted kernels: records each launch's PREC
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **meta: launched.__setitem__(self.name, meta["PREC"])

    fake = type("Kernels", (), {n: Launcher(n) for n in ("_fwd", "_bwd_dr", "_bwd_dk", "_bwd_dv")})
    monkeypatch.setattr(wkv5_triton, "_kernels", lambda: fake)
    kernel = backend_triton.TritonKernel()
    kernel.precision = precision
    r, k, v, w, u, s0 = _inputs(B=1, T=16, H=1, N=16)
    r, k, v = (t.to(dtype).requires_grad_() for t in (r, k, v))
    y, sT = kernel.wkv5(r, k, v, w.float(), u.float(), s0.float().requires_grad_())
    (y.double().sum() + sT.double().sum()).backward()
    assert launched == {n: expected for n in ("_fwd", "_bwd_dr", "_bwd_dk", "_bwd_dv")}


def test_a_bad_wkv_precision_is_refused_by_kernel_selection():
    with pytest.raises(KernelError, match="wkv precision must be one of auto, fp32, tf32"):
        resolve_kernel("torch", "cpu", torch.float32, precision="fp16")


@pytest.mark.slow
def test_the_model_and_fit_hand_wkv_precision_to_the_kernel(tmp_path):
    # In a child: building a model imports torch._dynamo, which imports triton outside
    # Triton's interpreter and would break the interpreter tests of this process.
    code = f"""
import torch
from rwkv_plug.models import load_model
from rwkv_plug.models.init import init_state_dict
from rwkv_plug.training.fit import load_training_model
cpu = torch.device("cpu")
sd = init_state_dict(1, 64, 16, seed=0, dtype=torch.float32)
model = load_model(sd, kernel="torch")
seen = [model.kernel_for(cpu, torch.float32).precision]
for p in ("fp32", "tf32"):
    model.set_kernel("torch", precision=p)
    seen.append(model.kernel_for(cpu, torch.float32).precision)
torch.save(sd, {str(tmp_path / "m.pth")!r})
m = {{"load_model": {str(tmp_path / "m.pth")!r}, "kernel": "torch", "dropout": 0.0, "grad_cp": False}}
seen += [load_training_model({{**m, "wkv_precision": p}}).kernel_for(cpu, torch.float32).precision
         for p in ("fp32", "tf32", "auto")]
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['auto', 'fp32', 'tf32', 'fp32', 'tf32', 'auto']"


# -- the conformance helper catches broken kernels ---------------------------
class _IgnoresStateGrad(Kernel):
    """Detaches the final state, like kernels that drop dsT."""

    name = "ignores-dsT"

    def wkv5(self, r, k, v, w, u, s0):
        y, sT = wkv5_chunked(r, k, v, w, u, s0)
        return y, sT.detach()


class _SharedState(Kernel):
    """Uses row 0's s0 for every row (the earlier trainer's batch-offset bug)."""

    name = "shared-state"

    def wkv5(self, r, k, v, w, u, s0):
        return wkv5_chunked(r, k, v, w, u, s0[:1].expand_as(s0))


class _Crashes(Kernel):
    """Raises for T=1."""

    name = "crashes"

    def wkv5(self, r, k, v, w, u, s0):
        if r.shape[1] == 1:
            raise RuntimeError("T must be > 1")
        return wkv5_chunked(r, k, v, w, u, s0)


def _failed(report):
    return {c.name for c in report.checks if not c.passed}


def test_conformance_catches_an_ignored_state_gradient():
    report = check_kernel(_IgnoresStateGrad(), head_size=8, T=16)
    assert "sT_grad_only" in _failed(report) and "chained" in _failed(report)
    assert not report.passed


def test_conformance_catches_a_missing_batch_offset():
    report = check_kernel(_SharedState(), head_size=8, T=16)
    assert "batch_rows" in _failed(report)


def test_conformance_reports_a_crash_as_a_failed_check():
    report = check_kernel(_Crashes(), head_size=8, T=16)
    assert _failed(report) == {"T=1"}
    detail = next(c.detail for c in report.checks if c.name == "T=1")
    assert "RuntimeError" in detail and "T must be > 1" in detail


# -- selection ----------------------------------------------------------------
class _FastCpu(Kernel):
    """A fast CPU kernel a plugin might add."""

    name = "fastcpu"
    caps = KernelCaps(dtypes=("float32",), devices=("cpu",), speed_rank=50)

    def wkv5(self, r, k, v, w, u, s0):
        return wkv5_chunked(r, k, v, w, u, s0)


class _FasterButMissing(_FastCpu):
    """Even faster, but its library is not installed."""

    name = "missing"
    caps = KernelCaps(dtypes=("float32",), devices=("cpu",), speed_rank=99)

    @classmethod
    def availability(cls):
        return False, "libfoo is not installed"


class _KernelPlugin:
    @staticmethod
    @hookimpl
    def register_kernels():
        return [_FastCpu, _FasterButMissing, _IgnoresStateGrad]


@pytest.fixture
def with_plugin():
    p = plugins.configure("none")
    p.register(_KernelPlugin, "test-kernels")
    yield p
    p.unregister("test-kernels")


def test_auto_picks_torch_on_cpu():
    kernel = resolve_kernel("auto", "cpu", torch.float32)
    assert isinstance(kernel, TorchKernel)
    assert isinstance(resolve_kernel("auto", torch.device("cpu"), torch.bfloat16), TorchKernel)


def test_auto_picks_the_fastest_available_kernel(with_plugin, capsys):
    assert resolve_kernel("auto", "cpu", torch.float32).name == "fastcpu"
    # the faster 'missing' kernel was passed over: said once, with its reason
    assert capsys.readouterr().err == ("warning: model.kernel auto: using 'fastcpu' for wkv5 on cpu / float32, because "
                                       "faster kernels cannot run here (missing: libfoo is not installed)\n")
    resolve_kernel("auto", "cpu", torch.float32)
    assert capsys.readouterr().err == ""
    # fastcpu does not list float64, so auto goes back to torch for it.
    assert resolve_kernel("auto", "cpu", torch.float64).name == "torch"


def test_explicit_unavailable_kernel_is_an_error_with_its_reason(with_plugin, monkeypatch):
    with pytest.raises(KernelError, match="libfoo is not installed"):
        resolve_kernel("missing", "cpu", torch.float32)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(KernelError, match="triton.*not available.*no CUDA device"):
        resolve_kernel("triton", "cpu", torch.float32)
    with pytest.raises(KernelError, match="cuda.*not available"):
        resolve_kernel("cuda", "cpu", torch.float32)


def test_explicit_kernel_with_wrong_dtype_or_device_is_an_error(with_plugin):
    with pytest.raises(KernelError, match="does not support float64"):
        resolve_kernel("fastcpu", "cpu", torch.float64)
    with pytest.raises(KernelError, match="does not run on meta"):
        resolve_kernel("fastcpu", "meta", torch.float32)


def test_triton_on_cpu_only_when_named_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    # selection only: triton may already be imported here without its interpreter; the
    # self-check that runs it on CPU runs in test_kernels_triton.py's fresh processes
    from rwkv_plug.kernels import selfcheck

    monkeypatch.setattr(selfcheck, "failure", lambda *args: None)
    assert resolve_kernel("triton", "cpu", torch.float32).name == "triton"
    assert resolve_kernel("auto", "cpu", torch.float32).name == "torch"  # auto stays fast


def test_unknown_kernel_name_suggests_a_close_one():
    with pytest.raises(UnknownNameError, match="Did you mean 'triton'"):
        resolve_kernel("trition", "cpu", torch.float32)


def test_triton_interpret_is_read_through_settings():
    assert settings({"TRITON_INTERPRET": "1"}).triton_interpret is True
    assert settings({}).triton_interpret is False


@pytest.mark.slow
def test_importing_kernels_does_no_work():
    code = (
        "import sys\n"
        "import rwkv_plug.kernels.hooks, rwkv_plug.kernels.select, rwkv_plug.kernels.conformance\n"
        "from rwkv_plug.kernels.backend_triton import TritonKernel\n"
        "from rwkv_plug.kernels.backend_cuda import CudaKernel\n"
        "TritonKernel.availability(); CudaKernel.availability()\n"
        "bad = [m for m in ('triton', 'torch.utils.cpp_extension') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- CLI ------------------------------------------------------------------------
@pytest.mark.slow
def test_check_kernels_and_list_kernels_cli():
    out = run_cli("check-kernels", "-v", env={"TRITON_INTERPRET": ""})
    assert out.returncode == 0, out.stderr
    assert "torch      wkv5  PASS  [cpu, float32]" in out.stdout
    assert "torch      wkv7  PASS  [cpu, float32]" in out.stdout  # every op the kernel lists
    assert "ok   batch_rows" in out.stdout and "ok   decay_near_0" in out.stdout
    assert "    skip " not in out.stdout  # no check is skipped for the built-in kernels
    assert "triton     unavailable (no CUDA device" in out.stdout
    listing = run_cli("list-kernels", env={"TRITON_INTERPRET": ""})
    assert listing.returncode == 0
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert "available" in lines["torch"] and "unavailable (" in lines["triton"]
    assert "unavailable (" in lines["fla"]  # it needs CUDA (and the fla extra)


def test_check_kernels_fails_for_a_broken_kernel(with_plugin):
    result = CliRunner().invoke(cli, ["check-kernels", "--kernel", "ignores-dsT"])
    assert isinstance(result.exception, KernelError)
    assert "conformance failed for: ignores-dsT" in str(result.exception)
    assert "FAIL sT_grad_only" in result.output
