"""Temp folders next to ``data_path``, and removing those an outright kill left behind.

A build stages its dataset and intermediate files in folders beside
``data_path`` (same file system, so the final rename is atomic). Ctrl-C
removes them; SIGKILL or a power cut cannot. Each folder's name therefore
records its owner, ``.<data_path name>.<kind>-<host>-<pid>-<random>``, and
the next build of the same ``data_path`` removes the folders whose owner
process on this host is gone. Folders of other hosts (a shared file system)
and of live processes are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

KINDS = ("build", "work", "old")
_TAIL = re.compile(rf"(?:{'|'.join(KINDS)})-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[A-Za-z0-9_]+")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname())[:40] or "host"


def make(data_path: Path, kind: str) -> Path:
    """A fresh, empty temp folder of ``kind`` next to ``data_path``, owned by this process."""
    assert kind in KINDS, kind
    data_path.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{data_path.name}.{kind}-{_host()}-{os.getpid()}-",
                                 dir=data_path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)  # mkdtemp makes it private; the dataset is not
    return path


def sweep(data_path: Path) -> list[Path]:
    """Remove the temp folders of ``data_path`` left by dead processes of this host; the removed ones."""
    if os.name != "posix" or not data_path.parent.is_dir():
        return []  # elsewhere a process cannot be probed without side effects
    prefix, host, removed = f".{data_path.name}.", _host(), []
    for entry in data_path.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        tail = _TAIL.fullmatch(entry.name[len(prefix):])
        if tail is None or tail["host"] != host or _alive(int(tail["pid"])):
            continue
        if entry.is_symlink() or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True
