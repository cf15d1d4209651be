"""Built-in plugin: the torch, triton and cuda wkv5 kernels, and ``check-kernels``."""

from __future__ import annotations

import click

from rwkv_plug.core.hookspecs import hookimpl


@hookimpl
def register_kernels():
    from rwkv_plug.kernels.backend_cuda import CudaKernel
    from rwkv_plug.kernels.backend_torch import TorchKernel
    from rwkv_plug.kernels.backend_triton import TritonKernel

    return [TorchKernel, TritonKernel, CudaKernel]


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
              help="Input dtype for r, k, v (bf16/fp16/fp32/fp64 also accepted).")
@click.option("-v", "--verbose", is_flag=True, help="Print every check, not only failures.")
def check_kernels(names: tuple[str, ...], dtype: str, verbose: bool) -> None:
    """Run the wkv5 conformance suite on every kernel available on this machine."""
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
        report = check_kernel(entry.cls(), device=device, dtype=getattr(torch, dtype),
                              heads=1 if small else 2, T=32 if small else 64)
        verdict = "PASS" if report.passed else "FAIL"
        click.echo(f"{entry.name:<10} {verdict}  [{device}, {dtype}]  "
                   f"max_abs={report.max_abs:.2e} max_rel={report.max_rel:.2e}")
        for c in report.checks:
            if verbose or not c.passed:
                click.echo(f"    {'ok  ' if c.passed else 'FAIL'} {c.name:<16} "
                           f"max_abs={c.max_abs:.2e} max_rel={c.max_rel:.2e}  {c.detail}".rstrip())
        if not report.passed:
            failed.append(entry.name)
    if failed:
        raise KernelError(f"conformance failed for: {', '.join(failed)} (details above)")


@hookimpl
def register_commands(cli):
    cli.add_command(check_kernels)
