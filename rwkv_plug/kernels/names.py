"""The one check of a ``model.kernel`` name, shared by config validation and kernel selection.

Config loading (``training/model_config.py``) turns its errors into problem lines;
``select.resolve_kernel`` raises them. Light: no torch import.
"""

from __future__ import annotations

from typing import Any

from rwkv_plug.core.errors import ConfigError, KernelError, UnknownNameError, did_you_mean


def is_auto(name: Any) -> bool:
    return isinstance(name, str) and name.strip().lower() == "auto"


def named_kernel(name: Any, op: str | None = None) -> type | None:
    """The registered kernel class ``name`` stands for, after checking that it implements ``op``
    (when given) and can run on this machine; None for ``auto``. Device and dtype are checked
    at selection.

    Raises:
        ConfigError: not a name.
        UnknownNameError: not registered (with did-you-mean and the list).
        KernelError: registered but without ``op``, or not available here, with the reason.
    """
    from rwkv_plug.core import plugins
    from rwkv_plug.core.interfaces import kernel_availability

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model.kernel must be a kernel name or auto, got {name!r}")
    if is_auto(name):
        return None
    registry = plugins.kernels()
    if name not in registry:
        names = registry.names()
        raise UnknownNameError(f"model.kernel: unknown kernel '{name}'.{did_you_mean(name, names)} "
                               f"Available: auto, {', '.join(names)} (rwkv-plug list-kernels)")
    cls = registry.get(name)
    if op is not None and op not in cls.caps.ops:
        raise KernelError(f"model.kernel '{name}' does not implement {op} (it implements "
                          f"{', '.join(cls.caps.ops) or 'no op'}); use kernel: auto or another kernel.")
    ok, reason = kernel_availability(cls)
    if not ok:
        raise KernelError(f"model.kernel '{name}' is not available here: {reason}. "
                          "Pick another kernel (rwkv-plug list-kernels) or kernel: auto.")
    return cls
