"""The conformance suite every WKV kernel must pass, third-party ones included.

Usage (a plugin author's test)::

    from rwkv_plug.kernels.conformance import check_kernel
    report = check_kernel(MyKernel(), device="cuda", dtype=torch.bfloat16, op="wkv7")
    assert report.passed, report.format()

Each check compares the kernel's ``op``, fed inputs rounded to ``dtype``,
with the op's per-step reference (``kernels/<op>/reference.py``) run in fp64
on the same rounded values: outputs, final state and every gradient, ``ds0``
included. Errors are reported relative to the largest reference value of
the compared tensor. The ops' arguments and test inputs are described in
:mod:`.conformance_ops`. A check that cannot apply to a kernel is reported
as skipped, never as passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rwkv_plug.kernels.conformance_ops import DECAY_NEAR_0, DECAY_NEAR_1, OPS, OpSpec

#: Pass when max |kernel - reference| <= tol * max |reference|, per tensor.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
#: ``dw`` for near-zero decays carries extra rounding (see kernels/wkv5/fused.py).
DW_FACTOR = 10.0


@dataclass
class CheckResult:
    """One conformance check: its name, verdict and worst errors.

    A skipped check (one that cannot apply, ``detail`` says why) has
    ``skipped=True`` and ``passed=False``: it never counts as passed.
    """

    name: str
    passed: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    detail: str = ""
    skipped: bool = False

    @property
    def mark(self) -> str:
        """``ok``, ``FAIL`` or ``skip``, as reports print it."""
        return "skip" if self.skipped else ("ok" if self.passed else "FAIL")


@dataclass
class ConformanceReport:
    """All checks of one op for one kernel on one device and dtype."""

    kernel: str
    device: str
    dtype: str
    checks: list[CheckResult] = field(default_factory=list)
    op: str = "wkv5"

    @property
    def passed(self) -> bool:
        """Every check that ran passed, and at least one ran (skipped ones do not count)."""
        ran = [c for c in self.checks if not c.skipped]
        return bool(ran) and all(c.passed for c in ran)

    @property
    def skipped(self) -> list[str]:
        return [c.name for c in self.checks if c.skipped]

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.checks), default=0.0)

    def format(self) -> str:
        """A multi-line human summary, one line per check."""
        skipped = f" ({len(self.skipped)} skipped)" if self.skipped else ""
        head = (f"{self.kernel} {self.op} [{self.device}, {self.dtype}]: "
                f"{'PASS' if self.passed else 'FAIL'}{skipped}")
        lines = [head]
        for c in self.checks:
            extra = f"  {c.detail}" if c.detail else ""
            lines.append(
                f"  {c.mark:<4} {c.name:<16} max_abs={c.max_abs:.2e} max_rel={c.max_rel:.2e}{extra}"
            )
        return "\n".join(lines)


class _Mismatch(Exception):
    pass


class _Skip(Exception):
    """Raised by a check that cannot apply; its message says why."""


class _Runner:
    """Runs the kernel's op and the fp64 reference on the same rounded inputs."""

    def __init__(self, kernel, spec: OpSpec, device: str | torch.device, dtype: torch.dtype) -> None:
        self.kernel, self.spec, self.device, self.dtype = kernel, spec, torch.device(device), dtype
        self.op = getattr(kernel, spec.name)
        self.tol = TOLERANCE.get(dtype, 2e-2)
        self.state_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def inputs(self, B: int, T: int, H: int, N: int, seed: int, **kw) -> dict[str, Tensor]:
        """Test inputs, low-precision ones rounded to the test dtype (the rest to fp32)."""
        out = self.spec.inputs(B, T, H, N, seed, **kw)
        for n in self.spec.args:
            dt = self.dtype if n in self.spec.low_args else self.state_dtype
            out[n] = out[n].to(dt).to(torch.float64)
        return out

    def run(self, x: dict[str, Tensor], fn: Callable | None, loss: str = "both"):
        """``(y, sT, grads)`` in fp64 on CPU. ``fn`` None means the reference."""
        if fn is None:
            ins = [x[n].clone().requires_grad_() for n in self.spec.args]
            y, sT = self.spec.reference(*ins)
        else:
            ins = [x[n].to(self.device, self.dtype if n in self.spec.low_args else self.state_dtype)
                   .requires_grad_() for n in self.spec.args]
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
        if not pairs:
            raise _Skip("nothing to compare")  # never a vacuous pass
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

    def named(self, prefix: str, y, sT, grads, ref) -> list[tuple[str, Tensor, Tensor]]:
        out = [(f"{prefix}y", y, ref[0]), (f"{prefix}sT", sT, ref[1])]
        out += [(f"{prefix}{n}", g, rg) for n, g, rg in zip(self.spec.grad_names, grads, ref[2])]
        return out


def _check_vs_reference(run: _Runner, B: int, T: int, H: int, N: int, seed: int, loss="both",
                        only: tuple[str, ...] = (), **kw):
    x = run.inputs(B, T, H, N, seed, **kw)
    got = run.run(x, run.op, loss)
    ref = run.run(x, None, loss)
    pairs = run.named("", *got, ref)
    if only:
        pairs = [p for p in pairs if p[0] in only]
    return run.compare(pairs)


def _check_chained(run: _Runner, H: int, N: int, T1: int, T2: int):
    """Two calls passing the state on equal one call over the concatenation."""
    if T1 < 1 or T2 < 1:
        raise _Skip(f"needs T >= 2 to split, got {T1 + T2}")
    x = run.inputs(2, T1 + T2, H, N, seed=5)
    spec = run.spec
    tok = [n in spec.token_args for n in spec.args[:-1]]

    def chained(*args):
        first = [t[:, :T1] if cut else t for t, cut in zip(args[:-1], tok)]
        second = [t[:, T1:] if cut else t for t, cut in zip(args[:-1], tok)]
        y1, s1 = run.op(*first, args[-1])
        y2, s2 = run.op(*second, s1)
        return torch.cat([y1, y2], dim=1), s2

    got = run.run(x, chained)
    pairs = run.named("chained.", *got, run.run(x, run.op))
    pairs += run.named("ref.", *got, run.run(x, None))
    return run.compare(pairs)


def _check_rows(run: _Runner, H: int, N: int, T: int):
    """B=3 with a different s0 per row: each row equals that row run alone."""
    x = run.inputs(3, T, H, N, seed=7)
    y, sT, grads = run.run(x, run.op)
    per_row = (*run.spec.row_args, "gy", "gs")
    row_grads = {f"d{n}" for n in run.spec.row_args}  # the others are sums over rows
    pairs = []
    for b in range(3):
        xb = {n: (t[b : b + 1] if n in per_row else t) for n, t in x.items()}
        ry, rs, rg = run.run(xb, None)
        pairs += [(f"row{b}.y", y[b : b + 1], ry), (f"row{b}.sT", sT[b : b + 1], rs)]
        for n, g, ref in zip(run.spec.grad_names, grads, rg):
            if n in row_grads:
                pairs.append((f"row{b}.{n}", g[b : b + 1], ref))
    return run.compare(pairs)


def _check_ragged(run: _Runner, H: int, N: int, chunk: int, T: int):
    if chunk < 2:
        raise _Skip(f"chunk_size {chunk}: every T is a whole number of chunks")
    return _check_vs_reference(run, 1, T, H, N, seed=6)


def check_kernel(kernel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 head_size: int = 64, heads: int = 2, T: int = 48, op: str = "wkv5"
                 ) -> ConformanceReport:
    """Run every conformance check of ``op`` (``"wkv5"`` or ``"wkv7"``) on ``kernel``.

    ``kernel`` is an instance with a method named ``op``. ``T`` is the main
    sequence length (keep it small under interpreters). Exceptions raised by
    the kernel fail the check they happen in; a check that cannot apply is
    reported as skipped.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; the conformance suite knows {', '.join(OPS)}")
    name = getattr(kernel, "name", type(kernel).__name__)
    report = ConformanceReport(name, str(device), str(dtype).replace("torch.", ""), op=op)
    H, N = heads, head_size
    chunk = max(int(getattr(kernel, "chunk_size", 16)), 1)
    ragged = 2 * chunk + 3
    try:
        run = _Runner(kernel, OPS[op], device, dtype)
    except AttributeError:
        report.checks.append(CheckResult("has_op", False, detail=f"the kernel has no {op} method"))
        return report

    checks: list[tuple[str, Callable[[], tuple[float, float, str]]]] = [
        ("forward+backward", lambda: _check_vs_reference(run, 2, T, H, N, seed=1)),
        ("s0_grad", lambda: _check_vs_reference(run, 2, T, H, N, seed=2, only=("ds0",))),
        ("sT_grad_only", lambda: _check_vs_reference(run, 2, T, H, N, seed=3, loss="sT")),
        ("chained", lambda: _check_chained(run, H, N, T // 2 + 1, T - T // 2 - 1)),
        ("batch_rows", lambda: _check_rows(run, H, N, T // 2)),
        ("T=1", lambda: _check_vs_reference(run, 2, 1, H, N, seed=4)),
        (f"ragged_T={ragged}", lambda: _check_ragged(run, H, N, chunk, ragged)),
    ]
    if run.spec.decay_checks:
        checks += [
            ("decay_near_0", lambda: _check_vs_reference(run, 2, T, H, N, seed=8, theta=DECAY_NEAR_0)),
            ("decay_near_1", lambda: _check_vs_reference(run, 2, T, H, N, seed=9, theta=DECAY_NEAR_1)),
        ]

    for check_name, fn in checks:
        try:
            max_abs, max_rel, problems = fn()
            report.checks.append(CheckResult(check_name, not problems, max_abs, max_rel, problems))
        except _Skip as exc:
            report.checks.append(CheckResult(check_name, False, detail=str(exc), skipped=True))
        except _Mismatch as exc:
            report.checks.append(CheckResult(check_name, False, detail=str(exc)))
        except Exception as exc:  # a crashing kernel fails the check, not the suite
            report.checks.append(
                CheckResult(check_name, False, detail=f"raised {type(exc).__name__}: {exc}"))
    return report
