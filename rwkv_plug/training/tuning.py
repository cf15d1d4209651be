"""``model.tuning``: full fine-tuning, state tuning or LoRA; the set-up and the checkpoints (the keys
are declared in training/options.py and checked in training/model_config.py).

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

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import ConfigError


def apply_tuning(model, m: Mapping[str, Any], log: Callable[[str], None] = print):
    """Set ``model`` up for ``m.tuning`` (in place) and say how many parameters train; ``m`` is the
    ``model:`` section (a :class:`~rwkv_plug.training.model_config.ModelConfig`, or a mapping of
    some of its keys)."""
    from rwkv_plug.models.loading import arch_of
    from rwkv_plug.training.model_config import model_config

    m = model_config(m)
    mode = m.tuning
    arch = arch_of(model)
    if mode not in arch.tuning_modes:
        name = getattr(arch, "name", None) or type(model).__name__  # a model of no registered architecture
        raise ConfigError(f"model.tuning: the {name} architecture does not support '{mode}' "
                          f"(it supports: {', '.join(arch.tuning_modes)})")
    if mode == "state":
        from rwkv_plug.models.state_tuning import add_start_state, read_state_file

        start = read_state_file(m.state_file) if m.state_file else None
        model.requires_grad_(False)
        add_start_state(model, start, f"model.state_file '{m.state_file}'")
    elif mode == "lora":
        from rwkv_plug.models import lora

        if m.lora_adapter:
            lora.load_adapter(model, m.lora_adapter)
        else:
            targets = lora.resolve_targets(model, m.lora_target_modules, arch.name)
            lora.add_lora(model, lora.lora_config(m.lora_r, m.lora_alpha, m.lora_dropout, targets, m.lora_options))
    log(parameter_line(model, mode))
    return model


def base_fingerprint(path: str | Path) -> dict[str, Any]:
    """The base model file's size and content hash (``data.sources.file_fingerprint``; sampled above
    64 MB), computed once per file version in a process: checkpoints are saved often."""
    st = Path(path).stat()
    return dict(_fingerprint(str(Path(path).resolve()), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _fingerprint(path: str, size: int, mtime_ns: int) -> tuple:
    from rwkv_plug.data.sources import file_fingerprint

    return tuple(file_fingerprint(path, hash_limit=0).items())


def base_mismatch(tuning: Mapping[str, Any], path: str | Path | None) -> str | None:
    """Why the base model file ``path`` is not the one a tuned checkpoint (its ``rwkv_plug.tuning``
    entry) was trained on, or None when it is (or the checkpoint recorded no fingerprint)."""
    want = tuning.get("load_model_fingerprint")
    if not want or not path or not Path(path).is_file():
        return None
    have = base_fingerprint(path)
    if have == want:
        return None
    sizes = (f"{want['size']:,} bytes there, {have['size']:,} here" if want.get("size") != have["size"]
             else "same size, other content")
    recorded = tuning.get("load_model")
    if recorded and Path(recorded).resolve() == Path(path).resolve():
        return f"its base model file '{path}' has changed since it was trained ({sizes})"
    return f"it was trained on base model '{recorded}', and '{path}' is another file ({sizes})"


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


def slim_checkpoint(checkpoint: dict[str, Any], model, m: Mapping[str, Any], prefix: str = "model.") -> None:
    """Drop the frozen base weights from a tuned run's checkpoint and record how to rebuild the model
    (``m``: the ``model:`` section, or a mapping of some of its keys)."""
    if not is_tuned(model):
        return
    from rwkv_plug.models.loading import arch_of
    from rwkv_plug.training.model_config import model_config

    m = model_config(m)
    keep = {prefix + k for k in checkpoint_tensors(model)}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
    meta = {"mode": m.tuning, "arch": arch_of(model).name,
            "load_model": str(Path(m.load_model).resolve()) if m.load_model else None}
    if m.load_model and Path(m.load_model).is_file():  # export and resume check the base against it
        meta["load_model_fingerprint"] = base_fingerprint(m.load_model)
    if meta["mode"] == "lora":
        from rwkv_plug.models.lora import config_json

        meta["lora_config"] = config_json(model.peft_config["default"])
    checkpoint.setdefault("rwkv_plug", {})["tuning"] = meta
