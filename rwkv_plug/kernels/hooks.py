"""Built-in plugin: the torch, triton, cuda and fla WKV kernels, and the ``check-kernels`` command
(kernels/commands.py)."""

from __future__ import annotations

from rwkv_plug.core.hookspecs import hookimpl


@hookimpl
def register_kernels():
    from rwkv_plug.kernels.backend_cuda import CudaKernel
    from rwkv_plug.kernels.backend_fla import FlaKernel
    from rwkv_plug.kernels.backend_torch import TorchKernel
    from rwkv_plug.kernels.backend_triton import TritonKernel

    return [TorchKernel, TritonKernel, CudaKernel, FlaKernel]


@hookimpl
def register_commands(cli):
    from rwkv_plug.kernels.commands import check_kernels

    cli.add_command(check_kernels)
