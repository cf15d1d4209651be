"""``rwkv-plug fit`` config: the seed's ``trainer:`` / ``model:`` / ``data:`` shape.

:func:`load_fit_config` reads the YAML, checks every section and key
(did-you-mean for unknown ones), and reports all problems at once.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwkv_plug.core.config import Problems, check_sections, load_yaml, resolve_options
from rwkv_plug.core.errors import ConfigError, did_you_mean
from rwkv_plug.core.option_types import check_value
from rwkv_plug.core.sections import build, section_class
from rwkv_plug.data.options import DataConfig
from rwkv_plug.training import options as O
from rwkv_plug.training.lightning_args import check_values, checkpoint_hints, trainer_hints
from rwkv_plug.training.model_config import ModelConfig, model_section


#: The validated ``trainer:`` section, as Lightning gets it: one frozen field per key of
#: :data:`~rwkv_plug.training.options.TRAINER_LIGHTNING` (the Lightning arguments rwkv-plug
#: documents or reads; None where unset and Lightning's default applies), every other Lightning
#: argument given in ``lightning_options``. :func:`lightning_kwargs` gives the keyword arguments.
TrainerConfig = section_class(
    "TrainerConfig",
    [dataclasses.replace(o, default=None) if o.default is O.LIGHTNINGS_OWN else o for o in O.TRAINER_LIGHTNING],
    __name__, "The validated ``trainer:`` section (docs/config.md), less rwkv-plug's own keys "
    "(microbatch_size, target_batch_size, checkpoint: fields of FitConfig).", extensible=True,
    extra="lightning_options", extra_help="the other lightning.Trainer arguments given, passed on as they are")
_LIGHTNINGS_OWN = frozenset(o.name for o in O.TRAINER_LIGHTNING if o.default is O.LIGHTNINGS_OWN)


def lightning_kwargs(trainer: TrainerConfig) -> dict[str, Any]:
    """The keyword arguments for ``lightning.Trainer``: the keys set (a key left to Lightning's
    default and unset is left out) and every other argument given."""
    out = {name: getattr(trainer, name) for name in trainer.__section_keys__
           if not (name in _LIGHTNINGS_OWN and getattr(trainer, name) is None)}
    out.update(trainer.lightning_options)
    return out


@dataclass
class FitConfig:
    """A validated fit config: each section a typed, frozen object read by attribute. Paths are
    resolved; Lightning's values are as Lightning takes them."""

    path: Path
    #: the ``model:`` section, typed and frozen (``cfg.model.ctx_len``)
    model: ModelConfig
    #: the ``trainer:`` section, typed and frozen, less microbatch_size, target_batch_size and
    #: checkpoint (fields here); logger/callbacks still as specs. ``lightning_kwargs(cfg.trainer)``
    #: are the keyword arguments for ``lightning.Trainer``.
    trainer: TrainerConfig
    microbatch_size: int
    target_batch_size: int
    accumulate_grad_batches: int
    num_devices: int
    #: ``ModelCheckpoint`` keyword arguments (dirpath resolved).
    checkpoint: dict[str, Any]
    #: the ``data:`` section, typed and frozen (``cfg.data.data_path``; plugin keys in
    #: ``cfg.data.plugin_options``); plugins get it as a read-only mapping of every key
    data: DataConfig
    seed: int | None = 42
    root_dir: Path = field(default_factory=Path)
    #: ``--section.key value`` overrides from the command line (dotted key -> value), applied over the file
    overrides: dict[str, Any] = field(default_factory=dict)
    #: the config mapping that was validated: the file with ``overrides`` applied
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint["dirpath"])

    @property
    def world_size(self) -> int:
        return self.num_devices * int(self.trainer.num_nodes)


_NUM_NODES = next(o for o in O.TRAINER_LIGHTNING if o.name == "num_nodes")


def trainer_argument_names() -> list[str]:
    import lightning

    return [n for n in inspect.signature(lightning.Trainer.__init__).parameters if n != "self"]


def count_devices(devices: Any = "auto", accelerator: Any = "auto") -> int:
    """Devices per node, as Lightning will use them (needed for accumulation), from
    ``trainer.devices`` and ``trainer.accelerator``."""
    accel = str(accelerator).lower()
    if isinstance(devices, str) and "," in devices:  # Lightning's "0,1": device ids
        devices = [part for part in devices.split(",") if part.strip()]
    if isinstance(devices, (list, tuple)):
        if not devices:
            raise ConfigError("trainer.devices is an empty list; list device ids, or give a count or 'auto'")
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if devices in ("auto", -1):
        import torch

        if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()):
            return max(1, torch.cuda.device_count())
        if devices == -1 and accel == "cpu":
            import os

            return os.cpu_count() or 1
        return 1
    raise ConfigError(f"trainer.devices must be 'auto', a positive integer or a list of device ids, got {devices!r}")


def _check_plugin_spec(problems: Problems, key: str, spec: Any, simple: tuple[str, ...]) -> None:
    """``class_path``/``init_args`` mappings (LightningCLI form) or a simple name."""
    specs = spec if isinstance(spec, list) else [spec]
    for item in specs:
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, str):
            if item.lower() not in simple:
                problems.add(f"trainer.{key}: unknown name '{item}'.{did_you_mean(item, simple)} "
                             f"Use one of {', '.join(simple)} or a class_path/init_args mapping")
            continue
        if not isinstance(item, dict) or "class_path" not in item:
            problems.add(f"trainer.{key} entries must be a name or a mapping with class_path (and init_args)")
            continue
        extra = set(item) - {"class_path", "init_args"}
        if extra:
            problems.add(f"trainer.{key}: unexpected keys {sorted(extra)} next to class_path (put them in init_args)")
        if not isinstance(item.get("init_args", {}) or {}, dict):
            problems.add(f"trainer.{key}: init_args must be a mapping")


def sharded_strategy_problem(strategy: Any, accelerator: Any = "auto") -> str | None:
    """Why ``trainer.strategy`` cannot run here, or ``None`` (names, ``class_path`` mappings and
    Strategy objects; the rules are in :mod:`rwkv_plug.training.sharding`)."""
    from rwkv_plug.training.sharding import strategy_problem

    return strategy_problem(strategy, accelerator)


def logger_package_problem(name: str) -> str | None:
    """Why the named logger cannot be built here (its package is missing), or ``None``."""
    import importlib.util

    _, needs, extra = O.LOGGERS.get(name.lower(), ("", (), None))
    if not needs or any(importlib.util.find_spec(n) for n in needs):
        return None
    return f'trainer.logger: {name} needs the {needs[0]} package, which is not installed; pip install "rwkv-plug[{extra}]"'


def _trainer_section(raw: Any, problems: Problems, config_path: Path) -> dict[str, Any]:
    """lightning.Trainer's keyword arguments (rwkv-plug's defaults under the given ones) plus
    rwkv-plug's own ``trainer:`` keys (:data:`~rwkv_plug.training.options.TRAINER_OPTIONS`)."""
    ours = resolve_options("trainer", raw, (*O.TRAINER_OPTIONS, *O.TRAINER_LEGACY), problems,
                           passthrough=trainer_argument_names(), check_types=True, yaml_numbers=True)
    t = {**O.trainer_defaults(), **ours}
    check_values("trainer", t, trainer_hints(), problems)
    if "logger" in t:
        _check_plugin_spec(problems, "logger", t["logger"], tuple(O.LOGGERS))
        for item in t["logger"] if isinstance(t["logger"], list) else [t["logger"]]:
            missing = isinstance(item, str) and logger_package_problem(item)
            if missing:
                problems.add(missing)
    if "callbacks" in t:
        _check_plugin_spec(problems, "callbacks", t["callbacks"], ())
    refused = sharded_strategy_problem(t.get("strategy"), t.get("accelerator", "auto"))
    if refused:
        problems.add(refused)
    if not isinstance(t.get("default_root_dir"), (str, Path)):  # unset, null, or reported above
        t["default_root_dir"] = str(Path("runs") / config_path.stem)
    return t


def _callbacks_checkpoint(callbacks: Any) -> bool:
    """Whether ``trainer.callbacks`` holds a ModelCheckpoint (by its class_path)."""
    items = callbacks if isinstance(callbacks, list) else [callbacks]
    return any(isinstance(c, dict) and str(c.get("class_path", "")).split(".")[-1] == "ModelCheckpoint"
               for c in items)


def _checkpoint_section(spec: Any, root: Path, problems: Problems) -> dict[str, Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        problems.add("trainer.checkpoint must be a mapping of ModelCheckpoint settings")
        spec = {}
    names = [n for n in inspect.signature(ModelCheckpoint.__init__).parameters if n != "self"]
    given: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in names:
            problems.add(f"unknown key trainer.checkpoint.{key}.{did_you_mean(key, names)}")
        elif key == "save_weights_only" and value:
            problems.add("trainer.checkpoint.save_weights_only cannot be true: resume needs the optimizer state")
        else:
            given[key] = value
    check_values("trainer.checkpoint", given, checkpoint_hints(), problems)
    if not isinstance(given.get("dirpath"), str):  # unset, null, or reported above
        given.pop("dirpath", None)
    return {"dirpath": str(root / "checkpoints"), **O.checkpoint_defaults(), **given}


def load_fit_config(path: str | Path, problems: Problems | None = None,
                    overrides: dict[str, Any] | None = None) -> FitConfig:
    """Read and validate a fit config; raises ``ConfigError`` listing every problem
    (collected in ``problems`` when given: ``rwkv-plug check`` reads them from there).
    ``overrides`` (``{"trainer.max_steps": 20}``, see :mod:`rwkv_plug.core.overrides`) are
    applied over the file before validation, so they are checked as the file's keys are."""
    from rwkv_plug.core.overrides import apply_overrides

    path = Path(path)
    overrides = dict(overrides or {})
    raw = apply_overrides(load_yaml(path), overrides)
    shown = f"{path} (with --{', --'.join(overrides)})" if overrides else str(path)
    problems = Problems(shown) if problems is None else problems
    check_sections(raw, O.TOP_LEVEL, problems)
    malformed = set()
    for section in ("trainer", "model", "data"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            problems.add(f"section '{section}' must be a mapping of keys, got {type(raw[section]).__name__}")
            raw[section] = {}
            malformed.add(section)
    if not raw.get("model") and "model" not in malformed:
        problems.add("section 'model' is required (at least load_model and lr_init)")
    if not raw.get("data") and "data" not in malformed:
        problems.add("section 'data' is required")
    model = model_section(raw.get("model"), problems, path.parent)
    trainer = _trainer_section(raw.get("trainer"), problems, path)
    micro, target = trainer.pop("microbatch_size"), trainer.pop("target_batch_size")
    ckpt_spec = trainer.pop("checkpoint")
    root = Path(trainer["default_root_dir"])
    checkpoint = _checkpoint_section(ckpt_spec, root, problems)
    if ckpt_spec and _callbacks_checkpoint(trainer.get("callbacks")):
        problems.add("trainer.checkpoint and a ModelCheckpoint in trainer.callbacks both configure "
                     "checkpoints; keep one (the callback would silently win)")
    # a malformed data section was reported above: its keys' problems would only repeat it
    data = _data_section(raw.get("data"), Problems(str(path)) if "data" in malformed else problems)
    seed, problem = check_value(O.SEED_OPTION, raw.get("seed_everything", O.SEED_OPTION.default))
    if problem:
        problems.add(f"seed_everything {problem}")
    elif seed is True:
        seed = O.SEED_OPTION.default
    elif seed is False:
        seed = None

    accumulate = 1
    devices = 1
    try:
        devices = count_devices(trainer.get("devices", "auto"), trainer.get("accelerator", "auto"))
    except ConfigError as exc:
        problems.add(str(exc))
    nodes = trainer.get("num_nodes", 1)
    if "num_nodes" in trainer:
        nodes, problem = check_value(_NUM_NODES, nodes, yaml_numbers=True)
        if problem:
            problems.add(f"trainer.num_nodes {problem}")
        trainer["num_nodes"] = nodes
    explicit = trainer.get("accumulate_grad_batches", 1)
    sizes_valid = all(isinstance(n, int) and n >= 1 for n in (micro, nodes, devices))
    if isinstance(target, int) and sizes_valid and target > 0:
        if isinstance(explicit, int) and explicit > 1:
            problems.add("trainer.target_batch_size and trainer.accumulate_grad_batches > 1 cannot both be set; keep one")
        accumulate = max(1, target // (nodes * devices * micro))
    elif isinstance(explicit, int):
        accumulate = explicit
    trainer["accumulate_grad_batches"] = accumulate
    problems.raise_if_any()
    return FitConfig(
        path=path, model=model, trainer=build(TrainerConfig, trainer), microbatch_size=micro, target_batch_size=target,
        accumulate_grad_batches=accumulate, num_devices=devices, checkpoint=checkpoint, data=data,
        seed=seed, root_dir=root, overrides=overrides, raw=raw,
    )


def _data_section(raw: Any, problems: Problems) -> DataConfig:
    """The ``data:`` section, validated by the data area."""
    from rwkv_plug.data.options import data_config, resolve_data_config

    return data_config(resolve_data_config(raw if raw is None or not isinstance(raw, dict) else dict(raw), problems))
