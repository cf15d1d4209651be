"""One-line warnings for the user, on stderr, in the CLI's ``warning: ...`` form."""

from __future__ import annotations

import sys
import threading
from collections.abc import Hashable

_said: set[Hashable] = set()
_lock = threading.Lock()


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def warn_once(key: Hashable, message: str) -> None:
    """:func:`warn`, the first time ``key`` is seen in this process."""
    with _lock:
        if key in _said:
            return
        _said.add(key)
    warn(message)
