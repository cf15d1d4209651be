"""A spawned rank's failure (``strategy: ddp_spawn``) as one line, not a worker's traceback.

torch's process spawning sends the main process only the failed worker's
traceback, as text. Its last line names the exception: an rwkv-plug error is
raised again as the same class, with the rank in front; anything else becomes
a :class:`TrainingError` naming the rank and the exception. The original is
chained, so ``--debug`` still shows the worker's traceback.
"""

from __future__ import annotations

import re

from rwkv_plug.core import errors
from rwkv_plug.core.errors import RwkvPlugError, TrainingError

# "rwkv_plug.core.errors.DataError: message" (the module path is absent for builtins)
_LAST_LINE = re.compile(r"^(?P<cls>[A-Za-z_][\w.]*)(?::\s?(?P<msg>.*))?$")


def worker_failure(exc: BaseException) -> RwkvPlugError | None:
    """The one-line error for a worker failure ``exc`` raised by torch's spawn, else None."""
    try:
        from torch.multiprocessing import ProcessExitedException, ProcessRaisedException
    except ImportError:  # pragma: no cover - torch always has them
        return None
    if isinstance(exc, ProcessExitedException):
        how = f"was killed by {exc.signal_name}" if exc.signal_name else f"exited with status {exc.exit_code}"
        hint = " (out of memory?)" if exc.signal_name == "SIGKILL" else ""
        return TrainingError(f"training rank {exc.error_index} {how}{hint}")
    if not isinstance(exc, ProcessRaisedException):
        return None
    rank = exc.error_index
    lines = [line for line in str(exc.msg).splitlines() if line.strip()]
    match = _LAST_LINE.match(lines[-1].strip()) if lines else None
    if match is None:
        return TrainingError(f"training rank {rank} failed (rerun with --debug for its traceback)")
    path, message = match["cls"], (match["msg"] or "").strip()
    module, _, name = path.rpartition(".")
    ours = getattr(errors, name, None) if module == errors.__name__ else None
    if isinstance(ours, type) and issubclass(ours, RwkvPlugError):
        return ours(f"rank {rank}: {message}")
    said = f"{name}: {message}" if message else name
    return TrainingError(f"training rank {rank} failed with {said} (rerun with --debug for its traceback)")
