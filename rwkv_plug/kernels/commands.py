"""The kernels' command: ``check-kernels`` (conformance and self-check verdicts)."""

from __future__ import annotations

import click


def _device_for(cls) -> str | None:
    """Where to test a kernel here: CUDA when it can, else CPU if it runs there."""
    import torch

    from rwkv_plug.kernels.select import runs_on

    if torch.cuda.is_available() and runs_on(cls, "cuda"):
        return "cuda"
    return "cpu" if runs_on(cls, "cpu") else None


#: the short names other commands use, and the torch names kernel caps declare
_SHORT_DTYPES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}


@click.command("check-kernels", short_help="Run the WKV kernel conformance suite here.")
@click.option("--kernel", "names", multiple=True, metavar="NAME",
              help="Check only this kernel (repeatable); default: every registered kernel.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice([*_SHORT_DTYPES.values(), *_SHORT_DTYPES]),
              callback=lambda _ctx, _param, value: _SHORT_DTYPES.get(value, value),
              help="Input dtype for r, k, v (and wkv7's a, b); bf16/fp16/fp32/fp64 also accepted.")
@click.option("--op", "ops", multiple=True, type=click.Choice(["wkv5", "wkv7"]),
              help="Check only this op (repeatable); default: every op each kernel implements.")
@click.option("-v", "--verbose", is_flag=True, help="Print every check, not only failures.")
def check_kernels(names: tuple[str, ...], dtype: str, ops: tuple[str, ...], verbose: bool) -> None:
    """Run the conformance suite of each op every available kernel implements.

    One line per kernel and op; failed and skipped checks are always listed.
    """
    import torch

    from rwkv_plug.core import plugins
    from rwkv_plug.core.errors import KernelError
    from rwkv_plug.kernels.conformance import check_kernel
    from rwkv_plug.core.interfaces import kernel_availability

    registry = plugins.kernels()  # the group loaded the plugin set before dispatching
    entries = [registry.entry(n) for n in names] if names else list(registry)
    failed = []
    for entry in entries:
        ok, reason = kernel_availability(entry.cls)
        device = _device_for(entry.cls) if ok else None
        if not ok or device is None:
            why = reason if not ok else "runs on no device present here"
            click.echo(f"{entry.name:<10} unavailable ({why})")
            continue
        if dtype not in entry.cls.caps.dtypes:
            click.echo(f"{entry.name:<10} skipped ({dtype} not in its caps)")
            continue
        small = device == "cpu" and entry.name != "torch"  # interpreters are slow
        for op in entry.cls.caps.ops:
            if ops and op not in ops:
                continue
            report = check_kernel(entry.cls(), device=device, dtype=getattr(torch, dtype),
                                  heads=1 if small else 2, T=32 if small else 64, op=op,
                                  head_size=16 if small else 64)
            verdict = "PASS" if report.passed else "FAIL"
            skipped = f"  ({len(report.skipped)} skipped)" if report.skipped else ""
            click.echo(f"{entry.name:<10} {op:<5} {verdict}  [{device}, {dtype}]  "
                       f"max_abs={report.max_abs:.2e} max_rel={report.max_rel:.2e}{skipped}")
            for c in report.checks:
                if verbose or not c.passed:  # failed and skipped checks always print
                    click.echo(f"    {c.mark:<4} {c.name:<16} "
                               f"max_abs={c.max_abs:.2e} max_rel={c.max_rel:.2e}  {c.detail}".rstrip())
            if not report.passed:
                failed.append(f"{entry.name} ({op})")
    from rwkv_plug.kernels.selfcheck import format_verdicts

    for line in format_verdicts():  # what training's self-checks found (kernels/selfcheck.py)
        click.echo(line)
    if failed:
        raise KernelError(f"conformance failed for: {', '.join(failed)} (details above)")
