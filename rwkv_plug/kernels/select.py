"""Choosing a kernel for a WKV op: ``model.kernel: auto|torch|triton|cuda|<plugin name>``.

``auto`` takes the available kernel with the highest ``caps.speed_rank``
whose caps list the op, the device type and the dtype. A kernel named explicitly is
used or refused with its reason: never a silent fallback.
"""

from __future__ import annotations

import torch

from rwkv_plug.core import notice, plugins
from rwkv_plug.core.errors import KernelError
from rwkv_plug.core.interfaces import Kernel, kernel_availability
from rwkv_plug.kernels import selfcheck
from rwkv_plug.kernels.names import named_kernel
from rwkv_plug.kernels.precision import WKV_PRECISIONS


#: Why a kernel without ``caps.resets`` is refused for reset-packed data.
NO_RESETS = "cannot reset the state at the record boundaries of packed data (data.packing_state: reset)"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, the spelling used in ``KernelCaps.dtypes``."""
    return str(dtype).replace("torch.", "")


def runs_on(cls: type, device_type: str) -> bool:
    """Whether a kernel accepts tensors on ``device_type`` when named explicitly.

    A kernel may widen its ``caps.devices`` with a ``runs_on(device_type)``
    classmethod (triton does, for CPU under ``TRITON_INTERPRET=1``); ``auto``
    only ever looks at ``caps.devices``.
    """
    hook = getattr(cls, "runs_on", None)
    if callable(hook):
        try:
            return bool(hook(device_type))
        except Exception:
            return False
    return device_type in cls.caps.devices


def _instance(cls: type, precision: str) -> Kernel:
    if precision not in WKV_PRECISIONS:
        raise KernelError(f"wkv precision must be one of {', '.join(WKV_PRECISIONS)}, got {precision!r} "
                          "(model.wkv_precision)")
    kernel = cls()
    kernel.precision = precision
    return kernel


def resolve_kernel(name: str, device: torch.device | str, dtype: torch.dtype, op: str = "wkv5",
                   precision: str = "auto", resets: bool = False) -> Kernel:
    """A kernel instance for ``name`` running ``op`` on ``device`` with ``dtype`` inputs.

    ``precision`` (``model.wkv_precision``) is set on the instance as ``precision``.
    ``resets``: the data resets the state inside a row (``data.packing_state: reset``), so
    only a kernel whose caps declare ``resets`` will do.

    Raises ``UnknownNameError`` (with did-you-mean) for unregistered names and
    ``KernelError`` with the reason when the kernel cannot run here.
    """
    device_type = torch.device(device).type
    dt = dtype_name(dtype)
    registry = plugins.kernels()
    cls = named_kernel(name, op)
    if cls is not None:
        if not runs_on(cls, device_type):
            raise KernelError(
                f"model.kernel '{name}' does not run on {device_type} "
                f"(it supports {', '.join(cls.caps.devices)}); use kernel: auto or another kernel."
            )
        if dt not in cls.caps.dtypes:
            raise KernelError(
                f"model.kernel '{name}' does not support {dt} inputs "
                f"(it supports {', '.join(cls.caps.dtypes)}); change precision or the kernel."
            )
        if resets and not cls.caps.resets:
            raise KernelError(f"model.kernel '{name}' {NO_RESETS}; use kernel: auto or torch, "
                              "or set data.packing_state: carry and rebuild the data")
        failed = selfcheck.failure(registry.entry(name), op, device, dtype)
        if failed:  # named by the user: stop rather than train on wrong numbers
            raise KernelError(f"model.kernel '{name}' {failed}. Use kernel: auto or torch, "
                              "or see rwkv-plug check-kernels --kernel " + str(name))
        return _instance(cls, precision)

    best = None
    skipped: list[tuple[int, str]] = []  # (speed rank, "name: reason")
    usable = []
    for entry in registry:
        cls = entry.cls
        if op not in cls.caps.ops or device_type not in cls.caps.devices or dt not in cls.caps.dtypes:
            continue
        ok, reason = kernel_availability(cls)
        if ok and resets and not cls.caps.resets:
            ok, reason = False, NO_RESETS
        if not ok:
            skipped.append((cls.caps.speed_rank, f"{entry.name}: {reason}"))
            continue
        usable.append(entry)
    for entry in sorted(usable, key=lambda e: -e.cls.caps.speed_rank):  # fastest first; ties by name
        failed = selfcheck.failure(entry, op, device, dtype)
        if not failed:
            best = entry.cls
            break
        skipped.append((entry.cls.caps.speed_rank, f"{entry.name}: {failed}"))
    if best is None:
        why = "; ".join(text for _, text in skipped) or f"none lists {op}, this device and dtype in its caps"
        raise KernelError(
            f"no {op} kernel is available for {device_type} / {dt} ({why}). "
            "Run rwkv-plug list-kernels to see why."
        )
    faster = [text for rank, text in skipped if rank > best.caps.speed_rank]
    if faster:  # never a silent fallback: say once why a faster kernel was passed over
        notice.warn_once(("kernel auto", op, device_type, dt, best.name),
                         f"model.kernel auto: using '{best.name}' for {op} on {device_type} / {dt}, because faster "
                         f"kernels cannot run here ({'; '.join(faster)})")
    return _instance(best, precision)
