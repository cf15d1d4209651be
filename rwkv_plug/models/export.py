"""Turn a training checkpoint into an official x052 model file.

A Lightning checkpoint keeps the RWKV module at ``model.`` inside its
``state_dict`` (``_forward_module.`` is added by some strategies). Those
prefixes are stripped, non-model entries dropped, the result checked to be
a complete x052 state dict, cast, and written atomically.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from pathlib import Path

import torch

from rwkv_plug.core.errors import ModelError
from rwkv_plug.models.arch import RWKV5Arch
from rwkv_plug.models.io import parse_dtype, read_torch_file, save_state_dict

_PREFIXES = ("_forward_module.", "module.", "model.")
_CKPT_SUFFIXES = (".ckpt", ".pth", ".pt")


def checkpoint_safe_types() -> list:
    """Harmless things Lightning may store next to the weights.

    ``AttributeDict`` (hyper-parameters) is a dict subclass; it is read back
    as a plain ``dict``, so none of its code is imported or run.
    """
    return [
        pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath,
        (dict, "lightning.fabric.utilities.data.AttributeDict"),
        (dict, "lightning_fabric.utilities.data.AttributeDict"),
        (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    ]


def find_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself, or the checkpoint file inside a folder (``last.ckpt``, else the newest)."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"checkpoint '{p}' does not exist")
    if p.is_file():
        return p
    if (p / "checkpoint" / "mp_rank_00_model_states.pt").exists():
        raise ModelError(
            f"'{p}' is a DeepSpeed checkpoint folder; convert it first with Lightning's "
            "convert_zero_checkpoint_to_fp32_state_dict, then export the resulting file"
        )
    files = [f for f in p.iterdir() if f.is_file() and f.suffix in _CKPT_SUFFIXES]
    if not files:
        raise ModelError(f"no .ckpt or .pth file in folder '{p}'")
    last = [f for f in files if f.name == "last.ckpt"]
    return last[0] if last else max(files, key=lambda f: f.stat().st_mtime)


def strip_to_model(raw: Mapping, source: str) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint object, with training prefixes removed."""
    sd = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(sd, Mapping):
        raise ModelError(f"{source} holds no state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor) or not isinstance(key, str):
            continue
        name = key
        changed = True
        while changed:  # prefixes can stack, e.g. _forward_module.model.
            changed = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix) :], True
        out[name] = value
    # keep only names an x052 model has; other module attributes are training-only
    keep = ("emb.", "blocks.", "ln_out.", "head.")
    return {k: v for k, v in out.items() if k.startswith(keep)}


def export_checkpoint(
    ckpt: str | os.PathLike, out: str | os.PathLike, dtype: str | torch.dtype = "bf16"
) -> tuple[Path, Path, dict[str, int]]:
    """Write ``out`` from ``ckpt``; return (checkpoint used, file written, model dims)."""
    target = parse_dtype(dtype, allowed=("bf16", "fp32")) if isinstance(dtype, str) else dtype
    src = find_checkpoint(ckpt)
    raw = read_torch_file(src, safe_types=checkpoint_safe_types())
    sd = strip_to_model(raw, f"checkpoint '{src}'")
    if not RWKV5Arch.detect(sd):
        raise ModelError(
            f"checkpoint '{src}' does not hold an RWKV-v5 (x052) model "
            f"(found {len(sd)} model tensors); only rwkv5 can be exported"
        )
    dims = RWKV5Arch.check_complete(sd, f"checkpoint '{src}'")
    written = save_state_dict({k: v.to(target) for k, v in sd.items()}, out)
    return src, written, dims
