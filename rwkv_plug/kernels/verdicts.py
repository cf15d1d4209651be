"""The cache of kernel self-check verdicts: ``<RWKV_PLUG_CACHE>/kernel_verdicts.json``.

One JSON object ``{"format": 1, "verdicts": {key: verdict}}``; a key names
one combination (kernel, its version, op, device, dtype, torch and triton
versions, see :mod:`.selfcheck`) and its verdict says whether the kernel
passed there. Several processes (DDP ranks, two runs) may record at once:
each holds an exclusive lock on ``kernel_verdicts.json.lock`` while it
re-reads the file, adds its verdict and writes the whole file atomically
(:mod:`rwkv_plug.core.atomic`), so no writer corrupts the file or drops
another's verdict. Imports no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from rwkv_plug.core import notice
from rwkv_plug.core.atomic import atomic_write

FILE_NAME = "kernel_verdicts.json"
FORMAT = 1


def verdicts_path() -> Path:
    """Where the verdicts live: ``settings().cache_dir / kernel_verdicts.json``."""
    from rwkv_plug.core.env import settings

    return settings().cache_dir / FILE_NAME


def load(path: Path) -> dict[str, dict]:
    """Every cached verdict by key; ``{}`` when there is no file yet.

    An unreadable file (edited by hand, another format) is said once and
    treated as empty: its kernels are checked again and the file rewritten.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        notice.warn_once(("kernel verdicts", str(path)),
                         f"ignoring the kernel verdict cache {path} ({exc}); kernels are checked again")
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("verdicts"), dict):
        notice.warn_once(("kernel verdicts", str(path)),
                         f"ignoring the kernel verdict cache {path} (not format {FORMAT}); kernels are checked again")
        return {}
    return {k: v for k, v in data["verdicts"].items() if isinstance(v, dict)}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock beside ``path`` for a read-merge-write (POSIX; elsewhere the rename alone)."""
    try:
        import fcntl
    except ImportError:  # no flock: writes stay atomic, a concurrent verdict may be lost
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def record(path: Path, key: str, verdict: dict) -> None:
    """Add (or replace) ``key``'s verdict, keeping every other writer's.

    Raises ``OutputError`` when the cache folder cannot be written.
    """
    from rwkv_plug.core.errors import OutputError

    try:
        with _locked(path):
            merged = {**load(path), key: verdict}
            text = json.dumps({"format": FORMAT, "verdicts": merged}, indent=1, sort_keys=True)
            atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    except OSError as exc:  # the lock file itself cannot be made
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
