"""The WKV kernel a model uses: a registered name resolved per device and dtype, or an object."""

from __future__ import annotations

from typing import ClassVar

import torch


class KernelSlot:
    """Mixed into a model whose layers call one WKV op (``wkv_op``) through a kernel."""

    #: The op the model's layers call (``"wkv5"``, ``"wkv7"``); selection honours it.
    wkv_op: ClassVar[str]

    def set_kernel(self, kernel, precision: str = "auto") -> None:
        """Use another WKV kernel: a registered name, ``"auto"``, or an object with the op's method.

        ``precision`` is ``model.wkv_precision`` for a kernel resolved by name.
        """
        self.kernel_name = kernel if isinstance(kernel, str) else getattr(kernel, "name", "custom")
        self._kernel_spec = kernel
        self.wkv_precision = precision
        self._kernels: dict[tuple[str, torch.dtype, bool], object] = {}

    #: Set by :meth:`require_resets`: every kernel resolved from now on must reset states.
    needs_resets = False

    def require_resets(self) -> None:
        """The training data resets the state inside rows (``data.packing_state: reset``): resolve
        only kernels whose caps declare ``resets`` (``auto`` picks one, a named one is refused)."""
        self.needs_resets = True
        self._kernels = {}

    def kernel_for(self, device: torch.device, dtype: torch.dtype, resets: bool = False):
        """The kernel object used for inputs on ``device`` in ``dtype`` (resolved once);
        ``resets``: this forward resets the state inside a row."""
        resets = resets or self.needs_resets
        if not isinstance(self._kernel_spec, str):
            if resets and not getattr(getattr(self._kernel_spec, "caps", None), "resets", False):
                from rwkv_plug.core.errors import KernelError
                from rwkv_plug.kernels.select import NO_RESETS

                raise KernelError(f"kernel '{self.kernel_name}' {NO_RESETS}")
            return self._kernel_spec
        key = (str(device), dtype, resets)
        if key not in self._kernels:
            from rwkv_plug.kernels.select import resolve_kernel

            self._kernels[key] = resolve_kernel(self._kernel_spec, device, dtype, op=self.wkv_op,
                                                precision=self.wkv_precision, resets=resets)
        return self._kernels[key]

    def __getstate__(self):
        # resolved kernels may hold compiled extensions; re-resolve after unpickling
        return {**self.__dict__, "_kernels": {}}
