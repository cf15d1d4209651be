"""A run's logs: the default loggers, a wall clock metric, and reading the CSV log back.

By default ``fit`` writes two logs into one folder per run, ``<root>/logs/version_N``:
``metrics.csv`` (Lightning's CSVLogger) and ``tensorboard/`` (Lightning's
TensorBoardLogger), so ``tensorboard --logdir runs/cfg/logs`` shows every run. The
``report`` command reads the CSV logs of a run folder back with :func:`read_run`.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import ConfigError

#: The logged wall clock: seconds since this process started training (one value per step).
ELAPSED = "train/elapsed_sec"


def default_loggers(root: Path) -> list:
    """A CSV logger and, in its version folder's ``tensorboard/``, a TensorBoard logger."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    csv_logger = CSVLogger(save_dir=str(root), name="logs")
    # the same version number as the CSV log, resolved now: both then write into one folder
    board = TensorBoardLogger(save_dir=str(root), name="logs", version=csv_logger.version, sub_dir="tensorboard",
                              default_hp_metric=False)
    return [csv_logger, board]


@dataclass
class Series:
    """One logged value over the run: ``steps[i]`` optimizer steps done when ``values[i]`` was logged."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def last(self) -> tuple[int, float] | None:
        return (self.steps[-1], self.values[-1]) if self.steps else None

    def best(self) -> tuple[int, float] | None:
        """The lowest value and its step (the first, on a tie)."""
        if not self.steps:
            return None
        i = min(range(len(self.values)), key=lambda j: (self.values[j], j))
        return self.steps[i], self.values[i]


@dataclass
class RunLog:
    """The CSV logs of one run, every version (a resume starts a new one) merged in step order."""

    folders: list[Path]
    series: dict[str, Series]
    #: wall seconds of each version folder (its largest logged :data:`ELAPSED`), where logged
    wall_seconds: list[float]

    def get(self, name: str) -> Series:
        return self.series.get(name, Series())


def _version_number(folder: Path) -> int:
    m = re.fullmatch(r"version_(\d+)", folder.name)
    return int(m.group(1)) if m else -1


def log_folders(run_dir: str | Path) -> list[Path]:
    """The folders holding ``metrics.csv`` in ``run_dir``: itself, or its ``logs/version_*`` (or ``version_*``)
    folders in version order."""
    p = Path(run_dir)
    if not p.is_dir():
        raise ConfigError(f"run folder '{p}' does not exist; give the folder fit printed after 'logs:' "
                          "or the run's root (trainer.default_root_dir, e.g. runs/cfg)")
    if (p / "metrics.csv").is_file():
        return [p]
    for parent in (p / "logs", p):
        found = sorted((f for f in parent.glob("version_*") if (f / "metrics.csv").is_file()), key=_version_number)
        if found:
            return found
    raise ConfigError(f"'{p}' holds no metrics.csv (nor logs/version_*/metrics.csv); give the folder fit printed "
                      "after 'logs:' (a CSV log: trainer.logger unset, true, or csv)")


def _number(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_run(run_dir: str | Path) -> RunLog:
    """Every numeric column of the run's CSV logs, per optimizer step.

    Lightning writes a row's ``step`` as the optimizer steps done *before* the values of a
    training step, and a validation's row at the step it follows less one; both are shown
    here as the steps done once the value was known (``step + 1``). Where two versions
    log the same step (a resume from an earlier checkpoint), the later version's value wins.
    """
    folders = log_folders(run_dir)
    merged: dict[str, dict[int, float]] = {}
    walls: list[float] = []
    for folder in folders:
        wall = 0.0
        with (folder / "metrics.csv").open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                step = _number(row.get("step"))
                if step is None:
                    continue
                for name, text in row.items():
                    if name in ("step", "epoch") or name is None:
                        continue
                    value = _number(text)
                    if value is None:
                        continue
                    merged.setdefault(name, {})[int(step) + 1] = value
                    if name == ELAPSED:
                        wall = max(wall, value)
        if wall > 0:
            walls.append(wall)
    series = {name: Series(sorted(v), [v[s] for s in sorted(v)]) for name, v in merged.items()}
    return RunLog(folders, series, walls)


def run_log_dir(trainer, fallback: Path) -> Path:
    """The folder of the run's first logger (where ``config.yaml`` goes), else ``fallback``."""
    logger = trainer.loggers[0] if trainer.loggers else None
    folder: Any = getattr(logger, "log_dir", None) or (logger.save_dir if logger else None) or fallback
    return Path(folder)
