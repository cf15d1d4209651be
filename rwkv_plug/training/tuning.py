"""``model.tuning``: full fine-tuning, state tuning or LoRA; the keys, the set-up, the checkpoints.

* ``full``: every weight trains (the default).
* ``state``: every weight is frozen; a trainable WKV start state per layer and head
  (:mod:`rwkv_plug.models.state_tuning`) is where every sample starts, and the exact
  chunked BPTT gradient reaches it through all of a sample's chunks.
* ``lora``: every weight is frozen; peft LoRA adapters on the linear projections train
  (:mod:`rwkv_plug.models.lora`).

A tuned run's checkpoints hold only the trainable tensors (plus the optimizer and loop
state resume needs) and a ``rwkv_plug.tuning`` entry saying how to rebuild the model
around them (the base model file, the LoRA config); ``rwkv-plug export`` reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import ConfigError

TUNING_MODES = ("full", "state", "lora")
#: Keys that only mean something in one mode, with that mode.
_MODE_KEYS = {"state_file": "state", "lora_adapter": "lora", "lora_target_modules": "lora", "lora_options": "lora"}


def check_tuning_options(m: dict[str, Any], problems, existing_path: Callable[[str], Path | None]) -> None:
    """Report every problem with the tuning keys of the ``model:`` section (``m`` is changed in place:
    numbers parsed, paths resolved). ``existing_path`` finds a path as ``load_model`` is found."""
    from rwkv_plug.training.model_config import number

    mode = m["tuning"]
    if mode not in TUNING_MODES:
        from rwkv_plug.core.errors import did_you_mean

        hint = did_you_mean(mode, TUNING_MODES) if isinstance(mode, str) else ""
        problems.add(f"model.tuning must be {', '.join(TUNING_MODES)}, got {mode!r}.{hint}")
    m["lora_r"] = number(problems, "model.lora_r", m["lora_r"], int, 1)
    m["lora_alpha"] = number(problems, "model.lora_alpha", m["lora_alpha"], float, 0.0)
    m["lora_dropout"] = number(problems, "model.lora_dropout", m["lora_dropout"], float, 0.0)
    if isinstance(m["lora_dropout"], float) and m["lora_dropout"] >= 1:
        problems.add(f"model.lora_dropout must be < 1, got {m['lora_dropout']}")
    targets = m["lora_target_modules"]
    if targets is not None and (not isinstance(targets, list) or not targets
                                or not all(isinstance(t, str) and t.strip() for t in targets)):
        problems.add(f"model.lora_target_modules must be a list of layer names (e.g. [key, value, output]) "
                     f"or null for every linear projection of the blocks, got {targets!r}")
    if not isinstance(m["lora_options"], dict):
        problems.add(f"model.lora_options must be a mapping of peft LoraConfig fields (e.g. {{use_dora: true}}), "
                     f"got {m['lora_options']!r}")
    for key, what in (("state_file", "state file"), ("lora_adapter", "adapter folder")):
        value = m[key]
        if value in (None, ""):
            m[key] = None
            continue
        found = existing_path(str(value)) if isinstance(value, str) else None
        if found is None:
            problems.add(f"model.{key} '{value}' does not exist (looked in the working directory and the config's "
                         f"folder); give the {what} `rwkv-plug export` wrote")
        else:
            m[key] = str(found.resolve())
    for key, needs in _MODE_KEYS.items():
        if m[key] not in (None, {}) and mode in TUNING_MODES and mode != needs:
            problems.add(f"model.{key} applies only with model.tuning: {needs} (tuning is {mode}); "
                         f"remove the key or set tuning: {needs}")


def apply_tuning(model, m: dict[str, Any], log: Callable[[str], None] = print):
    """Set ``model`` up for ``m["tuning"]`` (in place) and say how many parameters train."""
    from rwkv_plug.models.loading import arch_of

    mode = m.get("tuning", "full")
    arch = arch_of(model)
    if mode not in arch.tuning_modes:
        name = getattr(arch, "name", None) or type(model).__name__  # a model of no registered architecture
        raise ConfigError(f"model.tuning: the {name} architecture does not support '{mode}' "
                          f"(it supports: {', '.join(arch.tuning_modes)})")
    if mode == "state":
        from rwkv_plug.models.state_tuning import add_start_state, read_state_file

        start = read_state_file(m["state_file"]) if m.get("state_file") else None
        model.requires_grad_(False)
        add_start_state(model, start, f"model.state_file '{m.get('state_file')}'")
    elif mode == "lora":
        from rwkv_plug.models import lora

        if m.get("lora_adapter"):
            lora.load_adapter(model, m["lora_adapter"])
        else:
            targets = lora.resolve_targets(model, m["lora_target_modules"], arch.name)
            lora.add_lora(model, lora.lora_config(m["lora_r"], m["lora_alpha"], m["lora_dropout"], targets,
                                                  m.get("lora_options")))
    log(parameter_line(model, mode))
    return model


def parameter_line(model, mode: str) -> str:
    """``tuning: state: 8,192 of 1,234,567 parameters train (0.66%)``."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"tuning: {mode}: {trained:,} of {total:,} parameters train ({100 * trained / max(total, 1):.2f}%)"


def is_tuned(model) -> bool:
    """Whether the model was set up for state tuning or LoRA (a full run may freeze a few
    parameters too, e.g. rwkv7's unused ``v0``: that does not make it a tuned run)."""
    return getattr(model, "tuned_state", None) is not None or getattr(model, "peft_config", None) is not None


def checkpoint_tensors(model) -> dict[str, Any]:
    """What a checkpoint of this model holds of it: everything, or only the trainable tensors of a tuned run."""
    sd = model.state_dict()
    if not is_tuned(model):
        return sd
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in sd.items() if k in trained}


def slim_checkpoint(checkpoint: dict[str, Any], model, m: dict[str, Any], prefix: str = "model.") -> None:
    """Drop the frozen base weights from a tuned run's checkpoint and record how to rebuild the model."""
    if not is_tuned(model):
        return
    from rwkv_plug.models.loading import arch_of

    keep = {prefix + k for k in checkpoint_tensors(model)}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
    meta = {"mode": m.get("tuning", "full"), "arch": arch_of(model).name,
            "load_model": str(Path(m["load_model"]).resolve()) if m.get("load_model") else None}
    if meta["mode"] == "lora":
        from rwkv_plug.models.lora import config_json

        meta["lora_config"] = config_json(model.peft_config["default"])
    checkpoint.setdefault("rwkv_plug", {})["tuning"] = meta
