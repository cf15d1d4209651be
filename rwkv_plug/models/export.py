"""Turn a training checkpoint into an official model file (x052, x070, ...).

A Lightning checkpoint keeps the RWKV module at ``model.`` inside its
``state_dict`` (``_forward_module.`` is added by some strategies). Those
prefixes are stripped, non-model entries dropped, the architecture detected
among the registered ones, the result checked to be complete for it
(``ModelArch.check_complete``), cast, and written atomically.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from pathlib import Path

import torch

from rwkv_plug.core.errors import ModelError
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
    """``path`` itself, or the newest checkpoint file (by modification time) inside a folder.

    The newest, not ``last.ckpt`` by name: a folder that holds several runs' files
    (``last.ckpt`` of one, ``last-v1.ckpt`` of the next) must give the latest run's
    newest state. A folder with no checkpoint file of its own (a run folder such as
    ``runs/cfg``) is searched below, e.g. ``checkpoints/`` and ``logs/version_N/checkpoints``.
    """
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
        files = [f for f in p.rglob("*.ckpt") if f.is_file()]
    if not files:
        raise ModelError(f"no .ckpt or .pth file in folder '{p}'")
    # a step file and last.ckpt written at the same save hold the same state
    return max(files, key=lambda f: (f.stat().st_mtime_ns, f.name.startswith("last")))


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
    # keep only names an RWKV model has; other module attributes are training-only
    keep = ("emb.", "blocks.", "ln_out.", "head.")
    return {k: v for k, v in out.items() if k.startswith(keep)}


def export_checkpoint(
    ckpt: str | os.PathLike, out: str | os.PathLike, dtype: str | torch.dtype = "bf16",
    merge: bool = False, base: str | None = None,
) -> tuple[Path, Path, dict[str, int]]:
    """Write ``out`` from ``ckpt``; return (checkpoint used, file written, model dims).

    The dims hold ``arch``, the architecture's name, besides its sizes. A state-tuning or
    LoRA checkpoint exports to a state file, an adapter folder or (``merge``) a merged
    model instead, and its dims say which as ``kind`` (see :mod:`rwkv_plug.models.tuned_export`).
    """
    from rwkv_plug.models.loading import detect_arch
    from rwkv_plug.models.tuned_export import export_tuned, tuning_of

    target = parse_dtype(dtype, allowed=("bf16", "fp32")) if isinstance(dtype, str) else dtype
    src = find_checkpoint(ckpt)
    raw = read_torch_file(src, safe_types=checkpoint_safe_types())
    source = f"checkpoint '{src}'"
    tuning = tuning_of(raw)
    if tuning is not None:
        written, dims = export_tuned(raw, tuning, source, out, target, merge, base)
        return src, written, dims
    if merge:
        raise ModelError(f"--merge applies to LoRA and state-tuning checkpoints; {source} holds a whole "
                         "model: export it without --merge")
    sd = strip_to_model(raw, source)
    arch = detect_arch(sd, source)
    dims = {"arch": arch.name, **arch.check_complete(sd, source)}
    written = save_state_dict({k: v.to(target) for k, v in sd.items()}, out)
    return src, written, dims
