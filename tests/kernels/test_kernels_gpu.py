"""The fast kernels on a CUDA GPU: conformance against the fp64 reference, per op and dtype.

Marked ``gpu``: on a machine without CUDA every test here is skipped with that reason
(and reported as skipped, never as passed). On a GPU machine run ``pytest -m gpu``
(or ``rwkv-plug check-kernels``, which runs the same suite).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu

KERNELS = [("cuda", "wkv5"), ("triton", "wkv5"), ("triton", "wkv7"), ("fla", "wkv7")]


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("name,op", KERNELS)
def test_fast_kernel_matches_the_reference_on_the_gpu(name, op, dtype_name):
    import torch

    from rwkv_plug.core import plugins
    from rwkv_plug.core.interfaces import kernel_availability
    from rwkv_plug.kernels.conformance import check_kernel

    cls = plugins.kernels().get(name)
    ok, reason = kernel_availability(cls)
    if not ok:
        pytest.skip(f"{name} is not available on this GPU machine: {reason}")
    report = check_kernel(cls(), device="cuda", dtype=getattr(torch, dtype_name), op=op, T=128)
    assert report.passed, report.format()
