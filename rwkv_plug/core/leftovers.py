"""Owner tags for temp files and folders, so what a killed process left can be found and removed.

Outputs are written to a temp path and renamed into place; Ctrl-C removes the
temp path, but SIGKILL or a power cut cannot. A temp name therefore carries
``<host>-<pid>-`` (:func:`tag`), and the next writer of the same output asks
:func:`left_by_dead` whether a name it finds belongs to a process of this host
that is gone. Names of live processes, of other hosts (a shared file system)
and in any other form are never claimed.
"""

from __future__ import annotations

import os
import re
import socket

_OWNER = re.compile(r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname())[:40] or "host"


def tag() -> str:
    """``<host>-<pid>-``: the start of a temp name's part that says who owns it."""
    return f"{_host()}-{os.getpid()}-"


def left_by_dead(owned: str) -> bool:
    """Whether ``owned`` (a name part starting with a :func:`tag`) belongs to a dead process of this host."""
    if os.name != "posix":
        return False  # elsewhere a process cannot be probed without side effects
    match = _OWNER.match(owned)
    return bool(match) and match["host"] == _host() and not _alive(int(match["pid"]))


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
