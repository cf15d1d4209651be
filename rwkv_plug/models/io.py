"""Reading and writing model files: plain ``{name: tensor}`` dicts.

Model files are untrusted data. They are read with ``weights_only=True``,
so a pickle that tries to run code is refused, never executed. Writes go
to a temporary file in the target folder, then ``os.replace``, so a crash
never leaves a half-written model under the final name.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from rwkv_plug.core.atomic import atomic_write
from rwkv_plug.core.errors import ModelError

#: The first bytes of torch.save's zip format and of a pickle (protocol 2 or later).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def parse_dtype(value: str | torch.dtype, allowed: Iterable[str] | None = None) -> torch.dtype:
    """``"bf16"``/``"fp32"``/... or a ``torch.dtype`` -> ``torch.dtype``; unknown -> ``ModelError``."""
    if isinstance(value, torch.dtype):
        return value
    names = list(allowed) if allowed is not None else list(_DTYPES)
    key = str(value).strip().lower()
    if key not in names or key not in _DTYPES:
        raise ModelError(f"unknown dtype '{value}'; use one of: {', '.join(names)}")
    return _DTYPES[key]


def read_torch_file(path: str | os.PathLike, safe_types: Iterable[Any] = ()) -> Any:
    """``torch.load`` with ``weights_only=True`` (mmap when the format allows).

    ``safe_types`` are extra harmless classes to allow (e.g. Lightning's
    ``AttributeDict``). Anything else that is not plain data is refused
    with a ``ModelError``, before any of its code can run. A file that is
    neither torch's zip format nor a pickle is named as such; torch's own
    warnings about old formats are kept out of the output.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file '{p}' does not exist")
    if p.is_dir():
        raise ModelError(f"'{p}' is a folder, expected a .pth model file")
    with p.open("rb") as fh:
        head = fh.read(4)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        what = "the file is empty" if not head else "neither a zip archive nor a pickle"
        raise ModelError(f"cannot read '{p}': it is not a PyTorch file ({what}); is it a .pth written by torch.save?")
    mmap = zipfile.is_zipfile(p)  # mmap needs the zip format of torch.save
    guard = torch.serialization.safe_globals(list(safe_types)) if safe_types else nullcontext()
    try:
        with guard, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4 in the checkpoint"
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"refused to load '{p}': it is not a plain tensor file and loading it would run "
            f"pickled code ({_unpickle_reason(str(exc))}); rwkv-plug only reads weights"
        ) from None
    except Exception as exc:  # corrupt or foreign files fail in many ways inside torch.load
        raise ModelError(
            f"cannot read '{p}' as a PyTorch file ({type(exc).__name__}: {_one_line(str(exc))[:160]}); "
            "is it a .pth written by torch.save?"
        ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unpickle_reason(message: str) -> str:
    """The useful part of torch's long weights-only error."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"it references the Python object '{found.group(1)}'"
    if re.search(r"Unsupported operand \d+", message):  # e.g. protocol 4's FRAME: pickle.dump, not torch.save
        return "it is a raw pickle, not a file torch.save wrote; re-save the weights with torch.save(state_dict, path)"
    found = re.search(r"WeightsUnpickler error: *\n*\s*(.+)", message)
    return found.group(1).strip()[:160] if found else "unsupported pickle content"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a model file as ``{name: tensor}`` on the CPU, safely (see module doc)."""
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and not isinstance(obj["state_dict"], torch.Tensor):
        raise ModelError(
            f"'{path}' is a training checkpoint, not a model file; "
            f"turn it into one with: rwkv-plug export {path} model.pth"
        )
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ModelError(f"'{path}' is not a model state dict (expected a dict of name -> tensor)")
    return dict(obj)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A tensor that owns exactly its data (torch.save writes whole storages)."""
    t = t.detach().cpu().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write ``state_dict`` atomically to ``path`` (parent folders are created)."""
    data = {k: _owned(v) for k, v in state_dict.items()}
    return atomic_write(path, lambda f: torch.save(data, f))
