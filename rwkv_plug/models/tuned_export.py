"""Export a state-tuning or LoRA checkpoint (``model.tuning: state | lora``).

Such a checkpoint holds only the trainable tensors and a ``rwkv_plug.tuning`` entry
(see :mod:`rwkv_plug.training.tuning`):

* state: a state file (``blocks.{i}.att.time_state``, fp32) for ``rwkv-plug generate --state``;
* lora: the adapter folder (peft format), or with ``merge`` the base model with the
  adapters merged, as an official-key model file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rwkv_plug.core.errors import ModelError


def tuning_of(raw: Any) -> dict[str, Any] | None:
    """The ``rwkv_plug.tuning`` entry of a checkpoint object (None for a full fine-tuning one)."""
    pos = raw.get("rwkv_plug") if isinstance(raw, Mapping) else None
    tuning = pos.get("tuning") if isinstance(pos, Mapping) else None
    return dict(tuning) if isinstance(tuning, Mapping) and tuning.get("mode") in ("state", "lora") else None


def _model_tensors(raw: Mapping, source: str) -> dict[str, torch.Tensor]:
    sd = raw.get("state_dict")
    if not isinstance(sd, Mapping):
        raise ModelError(f"{source} holds no state dict")
    return {k.removeprefix("model."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def export_tuned(raw: Mapping, tuning: Mapping[str, Any], source: str, out: str | os.PathLike,
                 dtype: torch.dtype, merge: bool, base: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Write what a tuned checkpoint exports to; return (path written, description)."""
    from rwkv_plug.core import plugins

    tensors = _model_tensors(raw, source)
    mode, arch = tuning["mode"], plugins.models().get(tuning["arch"])
    if mode == "state":
        from rwkv_plug.models.state_tuning import from_checkpoint_tensors, save_state_file

        states = from_checkpoint_tensors(tensors, arch.wkv_layout)
        if not states:
            raise ModelError(f"{source} is a state-tuning checkpoint without its tuned_state tensors")
        if merge:
            return _model_with_state(states, tuning, arch, source, out, dtype, base)
        path = save_state_file(states, out, torch.float32)
        return path, {"arch": arch.name, "kind": f"state file ({len(states)} layers, fp32)"}
    model = _base_with_adapter(tensors, tuning, source, base)
    if not merge:
        from rwkv_plug.models.lora import save_adapter

        return save_adapter(model, out), {"arch": arch.name, "kind": "LoRA adapter folder (peft format)"}
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.models.lora import merge_lora

    sd = merge_lora(model).state_dict()
    dims = arch.check_complete(sd, f"the merged model of {source}")
    path = save_state_dict({k: v.to(dtype) for k, v in sd.items()}, out)
    return path, {"arch": arch.name, **dims, "kind": "merged model"}


def _model_with_state(states, tuning, arch, source: str, out, dtype: torch.dtype, base: str | None):
    """The base model file with the state's ``blocks.N.att.time_state`` keys added (fp32): the form
    the ``rwkv`` pip package runs a tuned state from. rwkv-plug itself takes base + ``--state``."""
    from rwkv_plug.models.io import load_state_dict, save_state_dict
    from rwkv_plug.models.loading import load_model
    from rwkv_plug.models.state_tuning import check_state_file, wkv_shapes

    if not arch.time_state_in_model_file:
        raise ModelError(f"the rwkv pip package does not read a tuned state from a {arch.name} model file, so "
                         f"--merge has nothing to write for {source}; export it without --merge and use the "
                         "state file with `rwkv-plug generate --state`")
    path = base or tuning.get("load_model")
    if not path or not Path(path).is_file():
        raise ModelError(f"{source} was trained on base model '{path}', which is not there; name it with --base")
    _check_base(tuning, path, source)
    sd = load_state_dict(path)
    dims = arch.check_complete(sd, f"base model '{path}'")
    check_state_file(states, wkv_shapes(load_model(sd)), f"{source} (against base model '{path}')")
    out_path = save_state_dict({**{k: v.to(dtype) for k, v in sd.items()}, **states}, out)
    return out_path, {"arch": arch.name, **dims, "kind": "model with its tuned state (rwkv pip package form)"}


def _check_base(tuning: Mapping[str, Any], path: str, source: str) -> None:
    from rwkv_plug.training.tuning import base_mismatch

    why = base_mismatch(tuning, path)
    if why:
        raise ModelError(f"{source}: {why}; name the base model it was trained on with --base (to put the "
                         "adapter on another base, export it without --merge and start from it with "
                         "model.lora_adapter)" if tuning.get("mode") == "lora" else
                         f"{source}: {why}; name the base model it was trained on with --base")


def _base_with_adapter(tensors: Mapping[str, torch.Tensor], tuning: Mapping[str, Any], source: str,
                       base: str | None):
    """The base model (fp32) with the checkpoint's adapters in it."""
    from rwkv_plug.models.loading import load_model
    from rwkv_plug.models.lora import add_lora, config_from_json

    path = base or tuning.get("load_model")
    if not path or not Path(path).is_file():
        raise ModelError(f"{source} was trained on base model '{path}', which is not there; name it with --base")
    _check_base(tuning, path, source)
    model = load_model(path, dtype=torch.float32)
    add_lora(model, config_from_json(tuning["lora_config"]))
    # the checkpoint holds the trainable tensors under the adapted model's own names
    want = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the adapted base model lacks"
        raise ModelError(f"{source} does not fit base model '{path}': it {what}; name the base model it was "
                         "trained on with --base")
    wrong = [n for n, p in model.named_parameters() if n in want and tuple(tensors[n].shape) != tuple(p.shape)]
    if wrong:
        raise ModelError(f"{source} does not fit base model '{path}': {wrong[0]} has another shape; name the base "
                         "model it was trained on with --base")
    model.load_state_dict({n: tensors[n] for n in want}, strict=False)
    return model
