"""The wall clock of a run, logged so that ``rwkv-plug report`` can tell how long it took."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback

from rwkv_plug.training.runlogs import ELAPSED


class RunClock(Callback):
    """Logs ``train/elapsed_sec``, the seconds since training started in this process, at every
    microbatch (Lightning keeps a step's last value). A resumed run starts a new log folder
    and a new clock; ``report`` adds the folders' times."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None:
            pl_module.log(ELAPSED, time.perf_counter() - self._start, batch_size=1)
