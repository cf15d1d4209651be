"""Fast kernels check themselves before anything is trained on them.

Before :func:`~rwkv_plug.kernels.select.resolve_kernel` hands out a kernel
other than the built-in ``torch`` one, :func:`failure` looks up the verdict
for this *combination*: the kernel's name and version (a plugin's package
version, or rwkv-plug's version, plus a hash of the kernel's source), the
op, the device (CUDA: its name and compute capability), the dtype, and the
torch and triton versions. A combination seen for the first time gets a
quick check, a few calls on tiny inputs: the kernel's op and the torch
kernel's (run in fp64) on one set of inputs rounded to the dtype (two rows
with different initial states, one head of the models' head size 64 (16 on
the CPU), a length that is not a whole number of the kernel's chunks),
comparing the output, the final state and every gradient, the initial
state's included, with the conformance suite's tolerances. The verdict is cached in
``<RWKV_PLUG_CACHE>/kernel_verdicts.json`` (:mod:`.verdicts`), so the check
runs once per combination, not once per run.

A pass is silent. A failure is one line: ``kernel: auto`` passes to the
next kernel (in the end the torch one) and says so; a kernel named
explicitly stops with a :class:`KernelError`. The full suite stays
``rwkv-plug check-kernels``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from rwkv_plug.core import notice
from rwkv_plug.core.errors import OutputError
from rwkv_plug.kernels import verdicts

#: One head of the models' head size: a kernel compiled per head size (cuda) builds
#: the extension training uses anyway, not an extra one. On the CPU (Triton's
#: interpreter: seconds per call) the head size ``check-kernels`` uses there.
HEADS, HEAD_SIZE, CPU_HEAD_SIZE = 1, 64, 16

#: Verdicts that could not be saved (read-only cache folder): kept for this process only.
_unsaved: dict[tuple[str, str], dict] = {}


@dataclass(frozen=True)
class Combination:
    """What a verdict holds for: a kernel version on one device, dtype and software stack."""

    kernel: str
    version: str
    op: str
    device: str
    dtype: str
    torch: str
    triton: str

    @property
    def key(self) -> str:
        return " | ".join(asdict(self).values())


@functools.lru_cache(maxsize=1)
def _builtin_source_hash() -> str:
    """A hash of every source file of the built-in kernels (this folder): any edit re-checks."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".cu", ".cpp", ".cuh", ".h"}:
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _class_source_hash(cls: type) -> str:
    """A hash of the file that defines ``cls`` (a plugin edited in place re-checks)."""
    try:
        return hashlib.sha256(Path(inspect.getsourcefile(cls) or "").read_bytes()).hexdigest()[:12]
    except (OSError, TypeError):
        return "no-source"


def kernel_version(entry) -> str:
    """``<distribution> <version>+<source hash>`` of a registry entry's kernel class."""
    from rwkv_plug.core import plugins

    info = plugins.current().info.get(entry.plugin)
    if info is not None and info.builtin:
        return f"rwkv-plug {info.version}+{_builtin_source_hash()}"
    dist = (info.distribution if info else None) or entry.plugin
    return f"{dist} {(info.version if info else None) or '?'}+{_class_source_hash(entry.cls)}"


def describe_device(device: torch.device | str) -> str:
    """``cpu``, or ``cuda <name> sm_<major><minor>`` for a GPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return f"cuda {torch.cuda.get_device_name(dev)} sm_{major}{minor}"
    return dev.type


def _triton_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("triton")
    except PackageNotFoundError:
        return "none"


def combination(entry, op: str, device, dtype: torch.dtype) -> Combination:
    return Combination(entry.name, kernel_version(entry), op, describe_device(device),
                       str(dtype).replace("torch.", ""), torch.__version__, _triton_version())


def quick_check(kernel, op: str, device, dtype: torch.dtype) -> tuple[bool, str, bool]:
    """``(passed, detail, numeric)``: ``kernel``'s ``op`` against the torch kernel in fp64, forward and backward.

    ``numeric`` is False when the kernel raised instead of returning numbers: a
    crash is often the environment (a driver, a toolchain, memory), so it fails
    this use but is not cached as the kernel's verdict.
    """
    from rwkv_plug.kernels.backend_torch import TorchKernel
    from rwkv_plug.kernels.conformance import DW_FACTOR, TOLERANCE
    from rwkv_plug.kernels.conformance_ops import OPS

    spec = OPS[op]
    chunk = max(int(getattr(kernel, "chunk_size", 16)), 1)
    T = max(2 * chunk + 3, 19)  # a partial last chunk, and more than one chunk
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    N = CPU_HEAD_SIZE if torch.device(device).type == "cpu" else HEAD_SIZE
    x = spec.inputs(2, T, HEADS, N, seed=16)
    for n in spec.args:  # the values both sides see: rounded as the kernel gets them
        x[n] = x[n].to(dtype if n in spec.low_args else state_dtype).double()

    def run(fn, dev, low, high) -> dict[str, torch.Tensor]:
        ins = [x[n].to(dev, low if n in spec.low_args else high).requires_grad_() for n in spec.args]
        y, sT = fn(*ins)
        loss = (y.double() * x["gy"].to(y.device)).sum() + (sT.double() * x["gs"].to(sT.device)).sum()
        grads = torch.autograd.grad(loss, ins, allow_unused=True)
        out = {"y": y, "sT": sT}
        out.update({f"d{n}": torch.zeros_like(i) if g is None else g for n, g, i in zip(spec.args, grads, ins)})
        return {k: v.detach().double().cpu() for k, v in out.items()}

    # resolve_kernel may be called under no_grad, inference_mode or autocast (a first forward)
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        ref = run(getattr(TorchKernel(), op), "cpu", torch.float64, torch.float64)
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(
                torch.device(device).type, enabled=False):
            got = run(getattr(kernel, op), device, dtype, state_dtype)
    except Exception as exc:  # a crashing kernel fails its check
        first = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"raised {type(exc).__name__}: {first}".rstrip(": "), False
    bad = []
    for name, want in ref.items():
        have = got[name]
        if have.shape != want.shape:
            bad.append(f"{name} shape {tuple(have.shape)} != {tuple(want.shape)}")
        elif not torch.isfinite(have).all():
            bad.append(f"{name} not finite")
        else:
            rel = (have - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
            tol = TOLERANCE.get(dtype, 2e-2) * (DW_FACTOR if name == "dw" else 1.0)
            if rel > tol:
                bad.append(f"{name} rel err {rel:.1e} > {tol:.0e}")
    return not bad, "; ".join(bad), True


def failure(entry, op: str, device, dtype: torch.dtype) -> str | None:
    """None when ``entry``'s kernel may run ``op`` here, else why not (one line, for a message).

    The built-in torch kernel (the reference) is never checked; an op the
    check does not know is not checked either. Runs :func:`quick_check` for
    a combination without a cached verdict and caches its verdict.
    """
    from rwkv_plug.kernels.backend_torch import TorchKernel
    from rwkv_plug.kernels.conformance_ops import OPS

    if entry.cls is TorchKernel or op not in OPS:
        return None
    combo = combination(entry, op, device, dtype)
    path = verdicts.verdicts_path()
    verdict = verdicts.load(path).get(combo.key) or _unsaved.get((str(path), combo.key))
    if verdict is None:
        passed, detail, numeric = quick_check(entry.cls(), op, device, dtype)
        verdict = {**asdict(combo), "passed": passed, "detail": detail,
                   "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if not numeric:  # not cached: checked again next time
            return f"failed its self-check: it {detail} (not cached; checked again on the next use)"
        try:
            verdicts.record(path, combo.key, verdict)
        except OutputError as exc:
            _unsaved[(str(path), combo.key)] = verdict
            notice.warn_once(("kernel verdicts unsaved", str(path)),
                             f"kernel self-check verdicts are not cached: {exc}")
    if verdict.get("passed") is True:
        return None
    return (f"failed its self-check against the torch kernel ({verdict.get('detail') or 'no detail'}; "
            f"verdict cached in {path}, delete it to check again)")


def format_verdicts(path: Path | None = None) -> list[str]:
    """One line per cached verdict, for ``rwkv-plug check-kernels``."""
    path = verdicts.verdicts_path() if path is None else path
    found = verdicts.load(path)
    if not found:
        return [f"no cached self-check verdicts in {path}"]
    lines = [f"cached self-check verdicts ({path}):"]
    for v in sorted(found.values(), key=lambda v: (str(v.get("kernel")), str(v.get("op")), str(v.get("checked_at")))):
        mark = "PASS" if v.get("passed") is True else "FAIL"
        detail = f"  {v['detail']}" if v.get("detail") else ""
        lines.append(f"  {v.get('kernel')} {v.get('op')} {mark}  [{v.get('device')}, {v.get('dtype')}]  "
                     f"{v.get('version')}, torch {v.get('torch')}, triton {v.get('triton')}, "
                     f"{v.get('checked_at')}{detail}")
    return lines
