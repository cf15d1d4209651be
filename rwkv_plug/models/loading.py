"""Pick the architecture of a state dict among the registered model plugins."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rwkv_plug.core import plugins
from rwkv_plug.core.errors import ModelError
from rwkv_plug.models.io import load_state_dict, parse_dtype


def _summary(sd: Mapping[str, Any]) -> str:
    """A short description of what a state dict holds, for error messages."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    head = sd.get("head.weight")
    shape = f", head.weight {tuple(head.shape)}" if head is not None else ", no head.weight"
    sample = ", ".join(sorted({re.sub(r"^blocks\.\d+\.", "blocks.N.", k) for k in sd})[:8])
    return f"{len(sd)} keys, {len(blocks)} blocks{shape} (keys like: {sample})"


def detect_arch(state_dict: Mapping[str, Any], source: str = "state dict") -> type:
    """The registered architecture class whose ``detect`` accepts ``state_dict``."""
    registry = plugins.models()
    found = [e for e in registry if e.cls.detect(state_dict)]
    if not found:
        raise ModelError(
            f"{source} matches no registered model architecture: it has {_summary(state_dict)}. "
            f"Registered architectures: {', '.join(registry.names()) or '(none)'}"
        )
    if len(found) > 1:
        names = ", ".join(f"{e.name} ({e.plugin})" for e in found)
        raise ModelError(f"{source} matches several architectures: {names}; uninstall one plugin")
    return found[0].cls


def arch_of(model: nn.Module) -> type:
    """The registered architecture class of a built model (its ``arch_name``).

    A model without ``arch_name`` gets the :class:`ModelArch` defaults (e.g.
    its optimizer groups know no parameter names).
    """
    from rwkv_plug.core.interfaces import ModelArch

    name = getattr(model, "arch_name", None)
    return ModelArch if name is None else plugins.models().get(name)


def load_model(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    kernel: Any = "auto",
    dropout: float = 0.0,
    grad_cp: bool = False,
    dtype: torch.dtype | str | None = None,
    dim_att: int | None = None,
    dim_ffn: int | None = None,
) -> nn.Module:
    """See :func:`rwkv_plug.models.load_model`."""
    if isinstance(path_or_state_dict, Mapping):
        sd, source, copy = dict(path_or_state_dict), "state dict", True
    else:
        source = f"model file '{path_or_state_dict}'"
        sd, copy = load_state_dict(path_or_state_dict), False
    arch = detect_arch(sd, source)
    build = getattr(arch, "from_state_dict", None)
    if build is None:
        raise ModelError(f"model plugin '{arch.name}' cannot build models (no from_state_dict)")
    return build(
        sd,
        kernel=kernel,
        dropout=dropout,
        grad_cp=grad_cp,
        dtype=parse_dtype(dtype) if dtype is not None else torch.float32,
        dim_att=dim_att,
        dim_ffn=dim_ffn,
        source=source,
        copy=copy,
    )
