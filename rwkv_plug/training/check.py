"""``rwkv-plug check``: validate a fit config without building or loading anything.

It runs what ``fit`` runs when it reads a config (:func:`load_fit_config`: every
section and key, the plugins' options, the tokenizer and kernel names), then the
file checks ``fit`` makes before it starts: a local ``data.source`` and a
``--resume`` file. Files that an earlier command makes are warnings unless
``--strict``, so a config can be checked before they exist: ``model.load_model``
(``init-model``) and, with ``skip_datapath_setup``, ``data.data_path``
(``preload`` or ``datapack``). Nothing is read from them, tokenized or built, and
no Lightning Trainer is made: what only Lightning refuses still shows at ``fit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rwkv_plug.core.config import Problems, load_yaml
from rwkv_plug.core.errors import ConfigError, RwkvPlugError


class _Collected(Problems):
    """Problems, with the files that earlier steps make kept apart (unless strict)."""

    def __init__(self, source: str, strict: bool) -> None:
        super().__init__(source)
        self.strict = strict
        self.not_made_yet: list[str] = []
        self.finished = False  # validation reached its end (rather than stopping on one error)

    def add_missing_file(self, message: str) -> None:
        if self.strict:
            self.add(message)
        else:
            self.not_made_yet.append(message)

    def raise_if_any(self) -> None:
        self.finished = True
        super().raise_if_any()


@dataclass
class CheckReport:
    """What ``check`` found: problems (fit would stop on them), warnings, and the summary."""

    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


def check_config(path: str | Path, resume: str | None = None, strict: bool = False,
                 overrides: dict | None = None) -> CheckReport:
    """The problems ``fit`` stops on when it reads the config and looks for its files, all at
    once and without building anything (no Trainer, model, tokenizer or dataset).
    ``overrides``: command-line ``--section.key value`` settings, as ``fit`` applies them."""
    from rwkv_plug.core.overrides import apply_overrides
    from rwkv_plug.training.config import load_fit_config
    from rwkv_plug.training.fit import missing_source

    path = Path(path)
    report = CheckReport(path)
    problems = _Collected(str(path), strict)
    try:
        cfg = load_fit_config(path, problems, overrides=overrides)
    except ConfigError as exc:
        if not problems.finished:  # stopped early: the file is missing or not YAML
            report.errors = [*problems.items, str(exc).removeprefix(f"{path}: ")]
            return report
        cfg = None
    # fit looks for the source once the rest is valid; check says everything at once
    data = cfg.data if cfg is not None else apply_overrides(load_yaml(path), overrides or {}).get("data")
    missing = missing_source(data) if isinstance(data, Mapping) else None
    if missing:
        problems.add(missing)
    if cfg is not None:
        _check_outputs_of_earlier_steps(cfg, resume, problems)
        m, d = cfg.model, cfg.data
        report.summary = (f"model {m.load_model} (kernel {m.kernel}), data {d.source or d.data_path} (tokenizer "
                          f"{d.tokenizer}, strategy {d.strategy or 'picked from the columns'})")
    report.errors, report.warnings = list(problems.items), list(problems.not_made_yet)
    return report


def _check_outputs_of_earlier_steps(cfg, resume: str | None, problems: _Collected) -> None:
    """A prebuilt data_path (skip_datapath_setup) and a --resume file, by their existence only."""
    data_path = cfg.data.data_path
    if cfg.data.skip_datapath_setup and data_path and not Path(data_path).expanduser().exists():
        problems.add_missing_file(f"data.data_path '{data_path}' does not exist, and skip_datapath_setup uses it "
                                  "as it is; build it with `rwkv-plug preload` or `rwkv-plug datapack`")
    if resume not in (None, "auto"):  # auto finds nothing or the newest: never an error
        from rwkv_plug.training.checkpoint import find_resume

        try:
            find_resume(resume, [cfg.checkpoint_dir])
        except RwkvPlugError as exc:
            problems.add(str(exc))
