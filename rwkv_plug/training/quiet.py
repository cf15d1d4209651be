"""Keep known pieces of library noise out of ``fit``'s output.

* Lightning's advertisement for ``litlogger`` (an info log line at Trainer
  construction that says nothing about the run), and its "GPU available" /
  "TPU available" lines (``fit``'s batch line says which device kind runs).
* torch's ``FutureWarning`` that ``isinstance(treespec, LeafSpec)`` is
  deprecated, raised from inside Lightning's own ``_pytree`` helper.

Each is dropped by its exact text only, and only while ``fit`` runs;
every other warning and log line still shows.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropLitloggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("💡 Tip") and "litlogger" in message:
            return False
        # fit's own batch line names the device kind in use
        return not message.startswith(("GPU available: ", "TPU available: "))


def ignore_known_warnings() -> None:
    """Add the warning filters (inside a ``warnings.catch_warnings()`` block, or in a
    process that only trains, such as a ``ddp_spawn`` worker)."""
    warnings.filterwarnings("ignore", message=_LEAFSPEC, category=FutureWarning)


@contextmanager
def library_noise_filtered() -> Iterator[None]:
    """While active: no litlogger tip or device-availability lines, no LeafSpec deprecation warning."""
    log = logging.getLogger(_RANK_ZERO_LOGGER)
    tip = _DropLitloggerTip()
    log.addFilter(tip)
    try:
        with warnings.catch_warnings():
            ignore_known_warnings()
            yield
    finally:
        log.removeFilter(tip)
