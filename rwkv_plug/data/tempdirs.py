"""Temp folders next to ``data_path``, and removing those an outright kill left behind.

A build stages its dataset and intermediate files in folders beside
``data_path`` (same file system, so the final rename is atomic). Ctrl-C
removes them; SIGKILL or a power cut cannot. Each folder's name records its
owner, ``.<data_path name>.<kind>-<host>-<pid>-<random>``, and the next
build of the same ``data_path`` removes the folders whose owner process on
this host is gone (:mod:`rwkv_plug.core.leftovers`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rwkv_plug.core import leftovers
from rwkv_plug.core.atomic import current_umask

KINDS = ("build", "work", "old")


def make(data_path: Path, kind: str) -> Path:
    """A fresh, empty temp folder of ``kind`` next to ``data_path``, owned by this process."""
    assert kind in KINDS, kind
    data_path.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{data_path.name}.{kind}-{leftovers.tag()}", dir=data_path.parent))
    os.chmod(path, 0o777 & ~current_umask())  # mkdtemp makes it private; the dataset is not
    return path


def sweep(data_path: Path) -> list[Path]:
    """Remove the temp folders of ``data_path`` left by dead processes of this host; the removed ones."""
    if not data_path.parent.is_dir():
        return []
    prefix, removed = f".{data_path.name}.", []
    for entry in data_path.parent.iterdir():
        kind, dash, owned = entry.name[len(prefix):].partition("-")
        if not entry.name.startswith(prefix) or kind not in KINDS or not dash or not leftovers.left_by_dead(owned):
            continue
        if entry.is_symlink() or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
