"""LoRA adapters on a model's linear projections, through Hugging Face ``peft`` (``model.tuning: lora``).

peft's ``inject_adapter_in_model`` wraps the chosen ``nn.Linear`` layers of our plain
model in place (``blocks.0.att.key`` becomes a peft ``lora.Linear`` holding
``base_layer`` and ``lora_A``/``lora_B``), so the model keeps its class, its
``forward(idx, state)`` and its ``zero_state``. Nothing here computes a LoRA product:
peft does, and peft merges.

An **adapter folder** is peft's own format: ``adapter_config.json`` and
``adapter_model.safetensors`` with ``base_model.model.<module>.lora_A.weight`` keys,
so ``peft.PeftModel.from_pretrained(base_model, folder)`` reads it too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rwkv_plug.core.errors import ConfigError, ModelError

#: peft's key prefix of a saved adapter (it wraps the model as ``base_model.model``).
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def linear_names(model: nn.Module) -> list[str]:
    """Full names of the model's ``nn.Linear`` layers (``blocks.0.att.key``, ``head``)."""
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]


def _matches(name: str, target: str) -> bool:
    # peft's rule for a list of target names: the full name, or a dotted suffix of it
    return name == target or name.endswith("." + target)


def default_targets(model: nn.Module) -> list[str]:
    """Every linear projection inside the blocks, by leaf name (``key``, ``value``, ``output``, ...).

    The embedding and the head are left out: they are vocabulary-sized, and tuning
    them is rarely what an adapter is for.
    """
    leaves = {n.rsplit(".", 1)[-1] for n in linear_names(model) if n.startswith("blocks.")}
    return sorted(leaves)


def planned_trainable(shapes: Mapping[str, tuple], r: int, targets: Sequence[str] | str | None) -> int:
    """The adapters' parameter count for a model of these state-dict ``shapes``, without building it:
    each adapted linear layer ``(out, in)`` gets ``lora_A`` (r, in) and ``lora_B`` (out, r).

    The linear layers are the 2-D ``<name>.weight`` tensors other than the embedding (the
    models' other 2-D tensors are parameters of their own, named without ``.weight``);
    ``targets`` None means :func:`default_targets`' rule, every one inside the blocks; a
    string is a regular expression a layer's full name must match (peft's rule for one).
    """
    linear = {k[: -len(".weight")]: s for k, s in shapes.items()
              if k.endswith(".weight") and len(s) == 2 and k != "emb.weight"}
    if targets is None:
        chosen = [n for n in linear if n.startswith("blocks.")]
    elif isinstance(targets, str):
        import re

        chosen = [n for n in linear if re.fullmatch(targets, n)]
    else:
        chosen = [n for n in linear if any(_matches(n, t) for t in targets)]
    return sum(r * (out + inp) for out, inp in (linear[n] for n in chosen))


def resolve_targets(model: nn.Module, wanted: Sequence[str] | None, arch: str) -> list[str]:
    """``wanted`` checked against the model's linear layers (None: :func:`default_targets`).

    A name that matches no linear layer is a ``ConfigError`` naming it and listing the
    available names.
    """
    if wanted is None:
        return default_targets(model)
    names = linear_names(model)
    for target in wanted:
        if not any(_matches(n, target) for n in names):
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
            dotted = sorted({".".join(n.split(".")[-2:]) for n in names if n.startswith("blocks.")})
            raise ConfigError(
                f"model.lora_target_modules: '{target}' is not a linear layer of this {arch} model; "
                f"available: {', '.join(leaves)} (or one block part: {', '.join(dotted)})"
            )
    return list(wanted)


def lora_config(r: int, alpha: float, dropout: float, targets: Sequence[str], extra: Mapping[str, Any] | None = None):
    """A peft ``LoraConfig``; ``extra`` are further ``LoraConfig`` fields (``use_dora``, ``use_rslora``, ...)."""
    from peft import LoraConfig

    try:
        return LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=float(dropout), target_modules=list(targets),
                          bias="none", **dict(extra or {}))
    except (TypeError, ValueError) as exc:
        text = " ".join(str(exc).split())
        raise ConfigError(f"model.lora_options: peft's LoraConfig refused them: {text}") from None


def add_lora(model: nn.Module, config) -> nn.Module:
    """Wrap the config's target layers with new LoRA adapters, in place; only they stay trainable."""
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    try:
        inject_adapter_in_model(config, model)
    except ValueError as exc:  # e.g. an adapter's target modules this model lacks
        raise ModelError(f"peft cannot add these LoRA adapters to this model: {' '.join(str(exc).split())[:300]}; "
                         "use an adapter made for this base model") from None
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights in peft's file naming (``base_model.model.<module>.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    return {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def save_adapter(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write the model's adapter as a peft adapter folder (each file atomically)."""
    from safetensors.torch import save

    from rwkv_plug.core.atomic import atomic_write

    config = model.peft_config["default"]
    folder = Path(folder)
    data = save(adapter_tensors(model), metadata={"format": "pt"})
    atomic_write(folder / ADAPTER_WEIGHTS, lambda f: f.write(data))
    text = config_json(config).encode()  # peft writes its JSON its own way; then moved in atomically
    atomic_write(folder / ADAPTER_CONFIG, lambda f: f.write(text))
    return folder


def _adapter_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"'{folder}' is not a LoRA adapter folder (it needs {ADAPTER_CONFIG} and "
                         f"{ADAPTER_WEIGHTS}); write one with `rwkv-plug export` from a model.tuning: lora checkpoint")
    return folder


def read_adapter_config(folder: str | os.PathLike):
    """The LoraConfig of an adapter folder (its weights not read)."""
    from peft import LoraConfig

    folder = _adapter_folder(folder)
    try:
        return LoraConfig.from_pretrained(str(folder))
    except Exception as exc:  # a foreign or broken file fails in many ways inside peft
        raise ModelError(f"cannot read the adapter config in '{folder}': {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]}") from None


def read_adapter(folder: str | os.PathLike) -> tuple[Any, dict[str, torch.Tensor]]:
    """(LoraConfig, weights with peft's prefix removed) of an adapter folder."""
    from safetensors.torch import load_file

    folder = _adapter_folder(folder)
    config = read_adapter_config(folder)
    try:
        weights = load_file(str(folder / ADAPTER_WEIGHTS))  # safetensors: data only, no code
    except Exception as exc:  # a foreign or broken file fails in many ways inside peft/safetensors
        raise ModelError(f"cannot read the adapter in '{folder}': {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]}") from None
    return config, {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()}


def set_adapter_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """Load adapter weights (peft naming, no prefix) into the model's injected adapters; every
    adapter tensor of the model must be given, and nothing else."""
    from peft import set_peft_model_state_dict

    want = {k.removeprefix(PEFT_PREFIX) for k in adapter_tensors(model)}
    missing, extra = sorted(want - set(weights)), sorted(set(weights) - want)
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which this model has no adapter for"
        raise ModelError(f"{source} does not fit this model: it {what}; use an adapter trained on this base model")
    wrong = [k for k, v in adapter_tensors(model).items()
             if tuple(weights[k.removeprefix(PEFT_PREFIX)].shape) != tuple(v.shape)]
    if wrong:
        raise ModelError(f"{source} does not fit this model: {wrong[0]} has another shape")
    set_peft_model_state_dict(model, dict(weights))


def load_adapter(model: nn.Module, folder: str | os.PathLike, trainable: bool = True) -> nn.Module:
    """Inject the adapter saved in ``folder`` into ``model`` (in place) with its weights."""
    config, weights = read_adapter(folder)
    add_lora(model, config)
    set_adapter_weights(model, weights, f"adapter '{folder}'")
    if not trainable:
        model.requires_grad_(False)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (peft's ``merge``) and put the plain layer back,
    so the model's state dict has the official keys again. In place; returns the model."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, LoraLayer)]
    for name, mod in wrapped:
        try:
            mod.merge(safe_merge=True)  # refuses if the merged weight is not finite
        except ValueError as exc:
            raise ModelError(f"merging the LoRA adapter of {name} failed: {' '.join(str(exc).split())[:200]}") from None
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, mod.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def config_json(config) -> str:
    """The LoraConfig as peft writes ``adapter_config.json`` (plain JSON, safe in a checkpoint)."""
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        return (Path(tmp) / ADAPTER_CONFIG).read_text()


def config_from_json(text: str):
    """A LoraConfig back from :func:`config_json`'s text."""
    from peft import LoraConfig

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ADAPTER_CONFIG).write_text(text)
        return LoraConfig.from_pretrained(tmp)
