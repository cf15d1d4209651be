"""Atomic file writes: a temp file in the target's folder, fsync, then rename.

A reader (or a crash) never sees a half-written model, checkpoint or export.
Temp files are named ``.<target name>.<host>-<pid>-<random>.tmp``; each write
first removes those in its folder whose process on this host is gone (what a
SIGKILL during an earlier write left, see :mod:`rwkv_plug.core.leftovers`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from rwkv_plug.core import leftovers
from rwkv_plug.core.errors import OutputError

_TEMP = re.compile(r"\.(?P<target>.+)\.(?P<owned>[A-Za-z0-9_]+-\d+-[A-Za-z0-9_]+)\.tmp")


def current_umask() -> int:
    """This process's umask (reading it means setting it; it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_problem(target: Path, exc: OSError) -> str:
    """Why ``target`` cannot be written, in words (no temp file names)."""
    for folder in [target.parent, *target.parent.parents]:
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                return f"{folder} is not a folder"
            break
    return exc.strerror or str(exc) or type(exc).__name__


def sweep_temp_files(folder: Path) -> list[Path]:
    """Remove the temp files in ``folder`` that dead writers of this host left; the removed ones."""
    removed = []
    for entry in folder.glob(".*.tmp"):
        match = _TEMP.fullmatch(entry.name)
        if match and leftovers.left_by_dead(match["owned"]) and not entry.is_dir():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, then move it into place.

    Missing parent folders are created. An :class:`OSError` (a parent that is
    a file, no permission, a full disk) becomes an :class:`OutputError`.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{leftovers.tag()}", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {_write_problem(target, exc)}") from exc
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {_write_problem(target, exc)}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
