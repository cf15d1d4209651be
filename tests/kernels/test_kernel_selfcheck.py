"""Fast kernels check themselves before use (kernels/selfcheck.py, kernels/verdicts.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from rwkv_plug.core import notice, plugins
from rwkv_plug.core.errors import KernelError
from rwkv_plug.core.hookspecs import hookimpl
from rwkv_plug.core.interfaces import Kernel, KernelCaps
from rwkv_plug.kernels import selfcheck, verdicts
from rwkv_plug.kernels.backend_torch import TorchKernel
from rwkv_plug.kernels.select import resolve_kernel


class _Wrong(Kernel):
    """Fast and wrong: the torch kernel's output scaled by 1.01."""

    name = "wrong"
    caps = KernelCaps(dtypes=("float32",), devices=("cpu",), speed_rank=90, ops=("wkv5",))

    def wkv5(self, r, k, v, w, u, s0):
        y, sT = TorchKernel().wkv5(r, k, v, w, u, s0)
        return y * 1.01, sT


class _Right(Kernel):
    """Fast and right (the torch kernel under another name), slower than 'wrong'."""

    name = "right"
    caps = KernelCaps(dtypes=("float32",), devices=("cpu",), speed_rank=60, ops=("wkv5",))

    def wkv5(self, r, k, v, w, u, s0):
        return TorchKernel().wkv5(r, k, v, w, u, s0)


class _NoStateGrad(_Right):
    """Right forward, but no gradient reaches the initial state."""

    name = "no-ds0"

    def wkv5(self, r, k, v, w, u, s0):
        return TorchKernel().wkv5(r, k, v, w, u, s0.detach())


def _plugin(*classes):
    class Plugin:
        @staticmethod
        @hookimpl
        def register_kernels():
            return list(classes)

    p = plugins.configure("none")
    p.register(Plugin, "fake-kernels")
    p.info["fake-kernels"].version = "1.0"
    return p


@pytest.fixture
def checks(monkeypatch, tmp_path):
    """A fresh verdict cache; returns the list of (kernel, op) quick checks run."""
    monkeypatch.setenv("RWKV_PLUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(notice, "_said", set())  # each test sees its own once-only warnings
    ran = []
    real = selfcheck.quick_check

    def counting(kernel, op, device, dtype):
        ran.append((kernel.name, op))
        return real(kernel, op, device, dtype)

    monkeypatch.setattr(selfcheck, "quick_check", counting)
    return ran


def _cached(tmp_path) -> list[dict]:
    return list(verdicts.load(tmp_path / "cache" / verdicts.FILE_NAME).values())


def test_auto_falls_back_to_torch_from_a_wrong_kernel_with_one_line(checks, tmp_path, capsys):
    _plugin(_Wrong)
    assert isinstance(resolve_kernel("auto", "cpu", torch.float32), TorchKernel)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: model.kernel auto: using 'torch'")
    assert "wrong: failed its self-check" in err and "y rel err 1.0e-02 > 1e-04" in err
    assert checks == [("wrong", "wkv5")]
    (v,) = _cached(tmp_path)
    assert v["kernel"] == "wrong" and v["passed"] is False and v["dtype"] == "float32" and v["device"] == "cpu"
    assert v["version"].startswith("fake-kernels 1.0+") and v["torch"] == torch.__version__


def test_a_named_wrong_kernel_stops_with_a_kernel_error(checks):
    _plugin(_Wrong)
    with pytest.raises(KernelError, match=r"model.kernel 'wrong' failed its self-check .*y rel err"):
        resolve_kernel("wrong", "cpu", torch.float32)
    assert checks == [("wrong", "wkv5")]


def test_the_verdict_is_cached_and_a_new_version_checks_again(checks, capsys):
    p = _plugin(_Wrong)
    resolve_kernel("auto", "cpu", torch.float32)
    with pytest.raises(KernelError, match="failed its self-check"):  # the cached verdict still stops it
        resolve_kernel("wrong", "cpu", torch.float32)
    resolve_kernel("auto", "cpu", torch.float32)
    assert checks == [("wrong", "wkv5")]  # checked once, then read from the cache
    p.info["fake-kernels"].version = "1.1"  # the plugin was upgraded
    assert isinstance(resolve_kernel("auto", "cpu", torch.float32), TorchKernel)
    assert checks == [("wrong", "wkv5")] * 2


def test_a_right_fast_kernel_passes_silently_and_is_used(checks, tmp_path, capsys):
    _plugin(_Wrong, _Right)
    assert isinstance(resolve_kernel("auto", "cpu", torch.float32), _Right)  # wrong checked first, then right
    assert checks == [("wrong", "wkv5"), ("right", "wkv5")]
    err = capsys.readouterr().err
    assert "wrong: failed its self-check" in err and "using 'right'" in err and err.count("\n") == 1
    assert isinstance(resolve_kernel("right", "cpu", torch.float32), _Right)
    assert capsys.readouterr().err == ""
    assert len(checks) == 2
    assert {v["kernel"]: v["passed"] for v in _cached(tmp_path)} == {"wrong": False, "right": True}


class _Crashes(_Right):
    """Raises: a crash is often the environment (driver, toolchain), so it is not cached."""

    name = "crashes"

    def wkv5(self, r, k, v, w, u, s0):
        raise RuntimeError("no kernel image is available for execution on the device")


def test_a_crashing_kernel_fails_its_use_but_is_checked_again(checks, tmp_path, capsys):
    _plugin(_Crashes)
    with pytest.raises(KernelError, match=r"'crashes' failed its self-check: it raised RuntimeError: no kernel "
                                          r"image .*not cached"):
        resolve_kernel("crashes", "cpu", torch.float32)
    assert isinstance(resolve_kernel("auto", "cpu", torch.float32), TorchKernel)
    assert "crashes: failed its self-check" in capsys.readouterr().err
    assert checks == [("crashes", "wkv5")] * 2 and _cached(tmp_path) == []


def test_the_check_compares_the_initial_state_gradient(checks):
    _plugin(_NoStateGrad)
    with pytest.raises(KernelError, match=r"ds0 rel err"):
        resolve_kernel("no-ds0", "cpu", torch.float32)


def test_a_wrong_kernel_is_caught_at_a_models_first_forward_under_no_grad(checks, capsys):
    from rwkv_plug.models.rwkv5 import RWKV5

    _plugin(_Wrong)
    torch.manual_seed(0)
    model = RWKV5(1, 64, 32, kernel="auto")
    reference = RWKV5(1, 64, 32, kernel="torch")
    reference.load_state_dict(model.state_dict())
    idx = torch.randint(0, 32, (1, 7))
    with torch.no_grad():  # e.g. a validation step comes first
        logits, _ = model(idx)
        want, _ = reference(idx)
    assert isinstance(model.kernel_for(idx.device, torch.float32), TorchKernel)
    assert torch.equal(logits, want)
    assert "wrong: failed its self-check" in capsys.readouterr().err


def test_the_torch_kernel_is_never_checked(checks):
    assert isinstance(resolve_kernel("auto", "cpu", torch.float32), TorchKernel)
    assert isinstance(resolve_kernel("torch", "cpu", torch.float32), TorchKernel)
    assert checks == []


def test_concurrent_writers_keep_every_verdict(tmp_path):
    path = tmp_path / "v" / verdicts.FILE_NAME
    code = ("import sys; from pathlib import Path; from rwkv_plug.kernels import verdicts\n"
            "w = sys.argv[1]\n"
            "for i in range(25):\n"
            "    verdicts.record(Path(sys.argv[2]), f'{w}-{i}', {'passed': True, 'writer': w})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w), str(path)]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    data = json.loads(path.read_text())
    assert sorted(data["verdicts"]) == sorted(f"{w}-{i}" for w in range(4) for i in range(25))
    assert not list(path.parent.glob("*.tmp"))


def test_an_unreadable_cache_is_said_and_rewritten(tmp_path, capsys):
    path = tmp_path / verdicts.FILE_NAME
    path.write_text("{not json")
    assert verdicts.load(path) == {}
    assert "ignoring the kernel verdict cache" in capsys.readouterr().err
    verdicts.record(path, "k", {"passed": True})
    assert verdicts.load(path) == {"k": {"passed": True}}


def test_check_kernels_shows_the_cached_verdicts(checks, tmp_path):
    from rwkv_plug.core.cli import cli

    _plugin(_Wrong, _Right)
    resolve_kernel("auto", "cpu", torch.float32)
    out = CliRunner().invoke(cli, ["check-kernels", "--kernel", "right", "--op", "wkv5"]).output
    assert "cached self-check verdicts" in out
    lines = [line for line in out.splitlines() if line.startswith("  wrong wkv5") or line.startswith("  right wkv5")]
    assert len(lines) == 2
    assert "FAIL  [cpu, float32]" in lines[1] and "y rel err" in lines[1]
    assert "PASS  [cpu, float32]" in lines[0]
