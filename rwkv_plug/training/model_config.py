"""The ``model:`` section of a fit config: its rules across keys, and the typed result.

Each key's type, default, range and help are declared once, in
:data:`rwkv_plug.training.options.MODEL_OPTIONS`, and checked by the one
mechanism every section uses (:func:`rwkv_plug.core.config.resolve_options`).
What a single key's declaration cannot say (required keys, files that must
exist, keys that only mean something together) is in :func:`_rules`, the one
place for them. Every problem goes to the caller's
:class:`~rwkv_plug.core.config.Problems`, so the whole file is reported at once.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rwkv_plug.core import notice
from rwkv_plug.core.config import Problems, Resolved, resolve_options
from rwkv_plug.core.sections import build, section_class
from rwkv_plug.training import options as O

#: The validated ``model:`` section: one frozen field per key of :data:`~rwkv_plug.training.options.MODEL_OPTIONS`
#: (it also reads like a read-only mapping while code moves to attributes).
ModelConfig = section_class("ModelConfig", O.MODEL_OPTIONS, __name__,
                            "The validated ``model:`` section of a fit config (docs/config.md).")


def model_config(values: Mapping[str, Any]) -> ModelConfig:
    """``values`` as a :class:`ModelConfig`: itself if it is one, else built from the mapping
    (keys it lacks take their defaults; values are not checked). For functions that read
    the section by attribute and are also called with a plain mapping (tests, benchmarks)."""
    return values if isinstance(values, ModelConfig) else build(ModelConfig, values)


def _existing_path(value: str, config_dir: Path) -> Path | None:
    """Relative paths are tried from the working directory, then from the config's folder."""
    p = Path(value).expanduser()
    for candidate in ((p,) if p.is_absolute() else (p, config_dir / p)):
        if candidate.exists():
            return candidate
    return None


def _number(m: Resolved, key: str) -> bool:
    """Whether ``m[key]`` is a number that passed its own check (rules over it make sense)."""
    value = m[key]
    return key not in m.failed and isinstance(value, numbers.Real) and not isinstance(value, bool)


def _rules(m: Resolved, problems: Problems, config_dir: Path) -> None:
    """The ``model:`` rules that no single key's declaration can state; ``m`` is changed in place
    (paths resolved, ``lr_final: -1`` replaced by ``lr_init``)."""
    if m["load_model"] in (None, ""):
        problems.add("model.load_model is required (make a model with `rwkv-plug init-model OUT.pth`)")
    elif "load_model" not in m.failed:
        found = _existing_path(str(m["load_model"]), config_dir)
        if found is None:
            problems.add_missing_file(
                f"model.load_model '{m['load_model']}' does not exist (looked in the working directory "
                f"and in {config_dir}); create it with `rwkv-plug init-model`"
            )
        else:
            m["load_model"] = str(found)
    if m["lr_init"] is None:
        problems.add("model.lr_init is required (e.g. lr_init: 3e-4)")
    if _number(m, "warmup_steps") and _number(m, "lr_period"):
        if m["warmup_steps"] > 0 and m["lr_period"] > 0:
            problems.add("model.warmup_steps and model.lr_period cannot both be set (warmup is followed by a constant LR)")
        if m["lr_period"] == 0:
            problems.add("model.lr_period must be > 0, or -1 for the whole run")
    if _number(m, "lr_final") and m["lr_final"] < 0:
        if m["lr_final"] != -1:
            problems.add(f"model.lr_final must be >= 0, or -1 for lr_init (a constant LR), got {m['lr_final']}")
        m["lr_final"] = m["lr_init"]
    if (_number(m, "warmup_steps") and m["warmup_steps"] > 0 and _number(m, "lr_final")
            and _number(m, "lr_init") and m["lr_final"] != m["lr_init"]):
        notice.warn(f"model.lr_final ({m['lr_final']:g}) is not used: with warmup_steps the LR rises to lr_init "
                    "and stays there, as in the earlier trainer; set lr_final: -1 to silence this")
    if m["bptt_learning"] is False:  # one plain graph: neither option has a meaning there
        if _number(m, "bptt_learning_range") and m["bptt_learning_range"] > 0:
            problems.add("model.bptt_learning_range applies only with bptt_learning: true; set it to -1 "
                         "or turn bptt_learning on")
        if m["bptt_truncated_learning"] is True:
            problems.add("model.bptt_truncated_learning applies only with bptt_learning: true; set it to "
                         "false or turn bptt_learning on")
    if m["sample_prompts"] is None:
        m["sample_prompts"] = []
    _check_kernel(m["kernel"], problems)
    _tuning_rules(m, problems, config_dir)


#: ``model:`` keys that only mean something in one ``tuning`` mode, with that mode.
_MODE_KEYS = {"state_file": "state", "lora_adapter": "lora", "lora_target_modules": "lora", "lora_options": "lora"}


def _tuning_rules(m: Resolved, problems: Problems, config_dir: Path) -> None:
    """The files the tuning keys name exist (found as ``load_model`` is; paths resolved in ``m``),
    and each mode's keys are set only in that mode."""
    for key, what in (("state_file", "state file"), ("lora_adapter", "adapter folder")):
        value = m[key]
        if value in (None, ""):
            m[key] = None
        elif key not in m.failed:
            found = _existing_path(value, config_dir)
            if found is None:
                problems.add(f"model.{key} '{value}' does not exist (looked in the working directory and the "
                             f"config's folder); give the {what} `rwkv-plug export` wrote")
            else:
                m[key] = str(found.resolve())
    mode = m["tuning"]
    if "tuning" in m.failed:
        return
    for key, needs in _MODE_KEYS.items():
        if m[key] not in (None, {}) and mode != needs:
            problems.add(f"model.{key} applies only with model.tuning: {needs} (tuning is {mode}); "
                         f"remove the key or set tuning: {needs}")


def _check_kernel(name: Any, problems: Problems) -> None:
    """``auto`` or a registered kernel that can run on this machine (device and dtype are checked later)."""
    from rwkv_plug.core.errors import RwkvPlugError
    from rwkv_plug.kernels.names import named_kernel

    try:
        named_kernel(name)
    except RwkvPlugError as exc:
        problems.add(str(exc))


def model_section(raw: Any, problems: Problems, config_dir: Path) -> ModelConfig | None:
    """The validated ``model:`` section, or None when it has problems (they are in ``problems``)."""
    m = resolve_options("model", raw, (*O.MODEL_OPTIONS, *O.MODEL_LEGACY), problems, check_types=True,
                        yaml_numbers=True)
    before = len(problems.items)
    _rules(m, problems, config_dir)
    if m.failed or len(problems.items) > before:
        return None
    return build(ModelConfig, m)
