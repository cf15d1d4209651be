"""The conformance suite every wkv5 kernel must pass, third-party ones included.

Usage (a plugin author's test)::

    from rwkv_plug.kernels.conformance import check_kernel
    report = check_kernel(MyKernel(), device="cuda", dtype=torch.bfloat16)
    assert report.passed, report.format()

Each check compares the kernel, fed inputs rounded to ``dtype``, with
:func:`~rwkv_plug.kernels.wkv5.reference.wkv5_recurrent` run in fp64 on the same
rounded values. Errors are reported relative to the largest reference
value of the compared tensor. Decays span ``exp(-exp(-6))`` (slow) to
``exp(-exp(2))`` (~6e-4, fast), as in trained models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rwkv_plug.kernels.wkv5.reference import wkv5_recurrent

#: Pass when max |kernel - reference| <= tol * max |reference|, per tensor.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
#: ``dw`` for near-zero decays carries extra rounding (see kernels/wkv5/fused.py).
DW_FACTOR = 10.0
GRAD_NAMES = ("dr", "dk", "dv", "dw", "du", "ds0")


@dataclass
class CheckResult:
    """One conformance check: its name, verdict and worst errors."""

    name: str
    passed: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    detail: str = ""


@dataclass
class ConformanceReport:
    """All checks for one kernel on one device and dtype."""

    kernel: str
    device: str
    dtype: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.checks), default=0.0)

    def format(self) -> str:
        """A multi-line human summary, one line per check."""
        head = f"{self.kernel} [{self.device}, {self.dtype}]: {'PASS' if self.passed else 'FAIL'}"
        lines = [head]
        for c in self.checks:
            mark = "ok  " if c.passed else "FAIL"
            extra = f"  {c.detail}" if c.detail else ""
            lines.append(
                f"  {mark} {c.name:<16} max_abs={c.max_abs:.2e} max_rel={c.max_rel:.2e}{extra}"
            )
        return "\n".join(lines)


class _Mismatch(Exception):
    pass


def _inputs(B: int, T: int, H: int, N: int, seed: int) -> dict[str, Tensor]:
    """fp64 test inputs on CPU; each row of s0 differs."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    theta = torch.linspace(-6.0, 2.0, H * N, dtype=torch.float64).view(H, N)
    theta = theta[:, torch.randperm(N, generator=g)]  # fast and slow channels mixed
    return {
        "r": rnd(B, T, H, N, scale=0.5), "k": rnd(B, T, H, N, scale=0.5),
        "v": rnd(B, T, H, N, scale=0.5), "w": torch.exp(-torch.exp(theta)),
        "u": rnd(H, N, scale=0.5), "s0": rnd(B, H, N, N),
        "gy": rnd(B, T, H, N), "gs": rnd(B, H, N, N),
    }


class _Runner:
    """Runs the kernel and the fp64 reference on the same rounded inputs."""

    def __init__(self, kernel, device: str | torch.device, dtype: torch.dtype) -> None:
        self.kernel, self.device, self.dtype = kernel, torch.device(device), dtype
        self.tol = TOLERANCE.get(dtype, 2e-2)

    def cast(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        """Round r, k, v to the test dtype (w, u, s0 stay fp32 per the contract)."""
        out = dict(x)
        for n in ("r", "k", "v"):
            out[n] = x[n].to(self.dtype).to(torch.float64)
        if self.dtype != torch.float64:
            for n in ("w", "u", "s0"):
                out[n] = x[n].float().double()
        return out

    def run(self, x: dict[str, Tensor], fn: Callable | None, loss: str = "both"):
        """``(y, sT, grads)`` in fp64 on CPU. ``fn`` None means the reference."""
        if fn is None:
            ins = [x[n].clone().requires_grad_() for n in ("r", "k", "v", "w", "u", "s0")]
            y, sT = wkv5_recurrent(*ins)
        else:
            sdt = torch.float64 if self.dtype == torch.float64 else torch.float32
            dts = [self.dtype] * 3 + [sdt] * 3
            ins = [x[n].to(self.device, dt).requires_grad_()
                   for n, dt in zip(("r", "k", "v", "w", "u", "s0"), dts)]
            y, sT = fn(*ins)
        gy, gs = x["gy"].to(y.device), x["gs"].to(sT.device)
        total = 0.0
        if loss in ("both", "y"):
            total = total + (y.double() * gy).sum()
        if loss in ("both", "sT"):
            total = total + (sT.double() * gs).sum()
        grads = torch.autograd.grad(total, ins, allow_unused=True)
        grads = [torch.zeros_like(i) if g is None else g for g, i in zip(grads, ins)]
        return y.detach().double().cpu(), sT.detach().double().cpu(), [
            g.double().cpu() for g in grads
        ]

    def compare(self, pairs: list[tuple[str, Tensor, Tensor]]) -> tuple[float, float, str]:
        """Worst abs/rel error over named pairs; raises _Mismatch naming the worst offender."""
        worst_abs = worst_rel = 0.0
        bad = []
        for name, got, ref in pairs:
            if got.shape != ref.shape:
                raise _Mismatch(f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}")
            if not torch.isfinite(got).all():
                raise _Mismatch(f"{name}: non-finite values")
            err = (got - ref).abs().max().item() if got.numel() else 0.0
            rel = err / max(ref.abs().max().item() if ref.numel() else 0.0, 1e-30)
            worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
            tol = self.tol * (DW_FACTOR if name.endswith("dw") else 1.0)
            if rel > tol:
                bad.append(f"{name} rel {rel:.1e} > {tol:.0e}")
        return worst_abs, worst_rel, "; ".join(bad)


def _named(prefix: str, y, sT, grads, ref) -> list[tuple[str, Tensor, Tensor]]:
    out = [(f"{prefix}y", y, ref[0]), (f"{prefix}sT", sT, ref[1])]
    out += [(f"{prefix}{n}", g, rg) for n, g, rg in zip(GRAD_NAMES, grads, ref[2])]
    return out


def _check_vs_reference(run: _Runner, B: int, T: int, H: int, N: int, seed: int, loss="both",
                        only: tuple[str, ...] = ()):
    x = run.cast(_inputs(B, T, H, N, seed))
    got = run.run(x, run.kernel.wkv5, loss)
    ref = run.run(x, None, loss)
    pairs = _named("", *got, ref)
    if only:
        pairs = [p for p in pairs if p[0] in only]
    return run.compare(pairs)


def _check_chained(run: _Runner, H: int, N: int, T1: int, T2: int):
    """Two calls passing the state on equal one call over the concatenation."""
    x = run.cast(_inputs(2, T1 + T2, H, N, seed=5))

    def chained(r, k, v, w, u, s0):
        y1, s1 = run.kernel.wkv5(r[:, :T1], k[:, :T1], v[:, :T1], w, u, s0)
        y2, s2 = run.kernel.wkv5(r[:, T1:], k[:, T1:], v[:, T1:], w, u, s1)
        return torch.cat([y1, y2], dim=1), s2

    got = run.run(x, chained)
    pairs = _named("chained.", *got, run.run(x, run.kernel.wkv5))
    pairs += _named("ref.", *got, run.run(x, None))
    return run.compare(pairs)


def _check_rows(run: _Runner, H: int, N: int, T: int):
    """B=3 with a different s0 per row: each row equals that row run alone."""
    x = run.cast(_inputs(3, T, H, N, seed=7))
    y, sT, grads = run.run(x, run.kernel.wkv5)
    pairs = []
    for b in range(3):
        xb = {n: (t[b : b + 1] if n in ("r", "k", "v", "s0", "gy", "gs") else t)
              for n, t in x.items()}
        ry, rs, rg = run.run(xb, None)
        pairs += [(f"row{b}.y", y[b : b + 1], ry), (f"row{b}.sT", sT[b : b + 1], rs)]
        for n, g, ref in zip(GRAD_NAMES, grads, rg):
            if n in ("dr", "dk", "dv", "ds0"):  # dw, du are sums over rows
                pairs.append((f"row{b}.{n}", g[b : b + 1], ref))
    return run.compare(pairs)


def check_kernel(kernel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 head_size: int = 64, heads: int = 2, T: int = 48) -> ConformanceReport:
    """Run every conformance check on ``kernel`` (an instance with ``wkv5``).

    ``T`` is the main sequence length (keep it small under interpreters).
    Exceptions raised by the kernel fail the check they happen in.
    """
    name = getattr(kernel, "name", type(kernel).__name__)
    report = ConformanceReport(name, str(device), str(dtype).replace("torch.", ""))
    run = _Runner(kernel, device, dtype)
    H, N = heads, head_size
    chunk = max(int(getattr(kernel, "chunk_size", 16)), 1)
    ragged = 2 * chunk + 3

    checks: list[tuple[str, Callable[[], tuple[float, float, str]]]] = [
        ("forward+backward", lambda: _check_vs_reference(run, 2, T, H, N, seed=1)),
        ("s0_grad", lambda: _check_vs_reference(run, 2, T, H, N, seed=2, only=("ds0",))),
        ("sT_grad_only", lambda: _check_vs_reference(run, 2, T, H, N, seed=3, loss="sT")),
        ("chained", lambda: _check_chained(run, H, N, T // 2 + 1, T - T // 2 - 1)),
        ("batch_rows", lambda: _check_rows(run, H, N, T // 2)),
        ("T=1", lambda: _check_vs_reference(run, 2, 1, H, N, seed=4)),
        (f"ragged_T={ragged}", lambda: _check_vs_reference(run, 1, ragged, H, N, seed=6)),
    ]

    for check_name, fn in checks:
        try:
            max_abs, max_rel, problems = fn()
            report.checks.append(CheckResult(check_name, not problems, max_abs, max_rel, problems))
        except _Mismatch as exc:
            report.checks.append(CheckResult(check_name, False, detail=str(exc)))
        except Exception as exc:  # a crashing kernel fails the check, not the suite
            report.checks.append(
                CheckResult(check_name, False, detail=f"raised {type(exc).__name__}: {exc}"))
    return report
