"""Worker processes: how many this process may use, and leaving Ctrl-C to the main process.

A Ctrl-C in a terminal reaches every process of the foreground group. The
worker processes that ``datasets`` forks for ``num_proc`` would each die
with a traceback of their own, interleaved with ours. Inside
:func:`main_handles_ctrl_c`, children forked from this process ignore
SIGINT instead: the main process alone gets the KeyboardInterrupt, and
``datasets`` closing its pool terminates the workers without a word.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state = threading.local()
_hook_lock = threading.Lock()
_hook_installed = False


def cpu_count() -> int:
    """CPUs this process may run on (its affinity set, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _ignore_sigint_in_child() -> None:
    # runs in the child right after fork; the flag is the forking thread's, copied by the fork
    if getattr(_state, "depth", 0) > 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def main_handles_ctrl_c() -> Iterator[None]:
    """Children forked inside this block ignore SIGINT (see the module docstring)."""
    global _hook_installed
    if not hasattr(os, "register_at_fork"):  # no fork: spawned workers start from a fresh state
        yield
        return
    with _hook_lock:
        if not _hook_installed:  # a fork hook cannot be removed, so it is installed once, when first needed
            os.register_at_fork(after_in_child=_ignore_sigint_in_child)
            _hook_installed = True
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
