"""The ``rwkv7`` architecture plugin: x070 key layout, detection, building.

Recognised from key names and shapes alone: an ``att.r_k`` of [H, 64] in
every block and no ``time_*`` key (x052 has ``att.time_decay``, x060
``att.time_maa*``). Every size is read from the tensors: n_layer = 1 + the
largest block index, vocab and n_embd from ``emb.weight``, dim_ffn from
``ffn.key.weight``, and the low-rank widths from ``att.w1/a1/v1/g1``: the
official formula for them changed in 2025, and released files use both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from rwkv_plug.core.errors import ModelError
from rwkv_plug.core.interfaces import ModelArch
from rwkv_plug.models.layout import block_count, check_layout, common_size, scaled_groups
from rwkv_plug.models.rwkv7 import HEAD_SIZE, RWKV7, LoraDims

_LORA = {"decay": "w", "a": "a", "value": "v", "gate": "g"}


def default_lora(n_embd: int) -> LoraDims:
    """Low-rank widths for a new model: RWKV-LM's x070 suggestion that released files follow.

    max(32, round(f / 32) * 32) with f = 1.8 sqrt(C), 1.8 sqrt(C), 1.3 sqrt(C), 0.6 C^0.8:
    64/64/32/128 at C = 768 (the 0.1B G1), 96/96/64/256 at C = 2048 (1.5B). RWKV-LM's 2025
    code suggests 2.5 sqrt(C), 2.5 sqrt(C), 1.7 sqrt(C), 5 sqrt(C) instead; pass widths to
    :func:`rwkv_plug.models.init7.init_state_dict` (``init-model --lora-*``) to use those.
    """
    width = lambda f: max(32, int(round(f / 32) * 32))  # noqa: E731
    C = n_embd
    return LoraDims(width(1.8 * math.sqrt(C)), width(1.8 * math.sqrt(C)), width(1.3 * math.sqrt(C)),
                    width(0.6 * C**0.8))


def x070_shapes(
    n_layer: int, n_embd: int, vocab_size: int, lora: LoraDims | None = None, dim_ffn: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Every key of an official x070 state dict with its shape, in RWKV-LM order."""
    C, V, H, N = n_embd, vocab_size, n_embd // HEAD_SIZE, HEAD_SIZE
    lora = lora or default_lora(C)
    Fd = dim_ffn or 4 * C
    shapes: dict[str, tuple[int, ...]] = {"emb.weight": (V, C)}
    for l in range(n_layer):
        b = f"blocks.{l}."
        if l == 0:
            shapes[b + "ln0.weight"] = shapes[b + "ln0.bias"] = (C,)
        for ln in ("ln1", "ln2"):
            shapes[f"{b}{ln}.weight"] = shapes[f"{b}{ln}.bias"] = (C,)
        for m in "rwkvag":
            shapes[f"{b}att.x_{m}"] = (1, 1, C)
        for field, m in _LORA.items():
            D = getattr(lora, field)
            shapes[f"{b}att.{m}1"], shapes[f"{b}att.{m}2"] = (C, D), (D, C)
            if m != "g":  # the gate has no bias vector
                shapes[f"{b}att.{m}0"] = (1, 1, C)
        shapes[b + "att.k_k"] = shapes[b + "att.k_a"] = (1, 1, C)
        shapes[b + "att.r_k"] = (H, N)
        for proj in ("receptance", "key", "value", "output"):
            shapes[f"{b}att.{proj}.weight"] = (C, C)
        shapes[b + "att.ln_x.weight"] = shapes[b + "att.ln_x.bias"] = (C,)
        shapes[b + "ffn.x_k"] = (1, 1, C)
        shapes[b + "ffn.key.weight"] = (Fd, C)
        shapes[b + "ffn.value.weight"] = (C, Fd)
    shapes["ln_out.weight"] = shapes["ln_out.bias"] = (C,)
    shapes["head.weight"] = (V, C)
    return shapes


def check_sizes(n_layer: int, n_embd: int, vocab_size: int, lora: LoraDims | None = None) -> None:
    """Raise ``ModelError`` for sizes x070 cannot have."""
    if n_layer < 1:
        raise ModelError(f"n_layer must be at least 1, got {n_layer}")
    if vocab_size < 1:
        raise ModelError(f"vocab_size must be at least 1, got {vocab_size}")
    if n_embd < HEAD_SIZE or n_embd % HEAD_SIZE:
        raise ModelError(f"n_embd must be a positive multiple of the head size {HEAD_SIZE}, got {n_embd}")
    for field, value in vars(lora or default_lora(n_embd)).items():
        if value < 1:
            raise ModelError(f"the {field} low-rank width must be at least 1, got {value}")


class RWKV7Arch(ModelArch):
    """RWKV-7 "Goose" (official x070 state dict, head size 64)."""

    name = "rwkv7"
    tuning_modes = ("full", "state", "lora")
    wkv_layout = "vk"

    @classmethod
    def detect(cls, state_dict: Mapping[str, Any]) -> bool:
        """x070: every block has a 2-D ``att.r_k`` of [H, 64]; no ``time_*`` key (x052, x060)."""
        keys = list(state_dict)
        if any(".time_" in k for k in keys):
            return False
        rks = [state_dict[k] for k in keys if k.endswith(".att.r_k")]
        return bool(rks) and all(
            getattr(t, "dim", lambda: 0)() == 2 and t.shape[1] == HEAD_SIZE for t in rks
        )

    @classmethod
    def dims(cls, state_dict: Mapping[str, Any], source: str = "x070 state dict") -> dict[str, Any]:
        """n_layer, n_embd, vocab_size, dim_ffn and the low-rank widths, read from the tensors."""
        try:
            vocab, n_embd = state_dict["emb.weight"].shape
            lora = LoraDims(**{f: common_size(state_dict, f".att.{m}1", 1) for f, m in _LORA.items()})
            return {
                "n_layer": block_count(state_dict),
                "n_embd": int(n_embd),
                "vocab_size": int(vocab),
                "dim_ffn": common_size(state_dict, ".ffn.key.weight", 0),
                "lora": lora,
            }
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{source} lacks a key needed to read its x070 sizes: {exc}") from None

    @classmethod
    def check_complete(cls, state_dict: Mapping[str, Any], source: str = "state dict") -> dict[str, Any]:
        """Raise ``ModelError`` unless the keys and shapes are exactly x070; return the dims."""
        dims = cls.dims(state_dict, source)
        check_layout(state_dict, x070_shapes(**dims), "x070", source)
        return dims

    @classmethod
    def init_state_dict(cls, n_layer: int, n_embd: int, vocab_size: int, **options: Any) -> dict[str, torch.Tensor]:
        """A new x070 state dict (see :mod:`rwkv_plug.models.init7`)."""
        from rwkv_plug.models.init7 import init_state_dict

        return init_state_dict(n_layer, n_embd, vocab_size, **options)

    @classmethod
    def param_groups(cls, named_params, weight_decay: float, layerwise_lr: bool) -> list[dict[str, Any]]:
        """The official x070 recipe: weight decay only on >=2-D ``.weight`` matrices (never on
        the low-rank ``w1``... or the vectors), ``att.w0`` at 2x the LR with ``layerwise_lr``.
        """
        two = lambda name: 2.0 if layerwise_lr and name.endswith(".att.w0") else 1.0  # noqa: E731
        return scaled_groups(named_params, weight_decay, two)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        *,
        kernel: Any = "auto",
        dropout: float = 0.0,
        grad_cp: bool = False,
        dtype: torch.dtype = torch.float32,
        dim_att: int | None = None,
        dim_ffn: int | None = None,
        source: str = "state dict",
        copy: bool = True,
    ) -> RWKV7:
        """Build an :class:`RWKV7` holding these weights (``copy=False`` may share memory)."""
        dims = cls.dims(state_dict, source)
        for key, given, found in (("dim_att", dim_att, dims["n_embd"]), ("dim_ffn", dim_ffn, dims["dim_ffn"])):
            if given is not None and given != found:
                raise ModelError(f"{source} has {key} {found}, but {key}={given} was requested")
        cls.check_complete(state_dict, source)
        with torch.device("meta"):  # no throw-away init; the weights come from the file
            model = RWKV7(**dims, kernel=kernel, dropout=dropout, grad_cp=grad_cp)
        weights = {k: v.to(dtype, copy=copy) for k, v in state_dict.items()}
        model.load_state_dict(weights, strict=True, assign=True)
        return model
