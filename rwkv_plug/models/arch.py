"""The ``rwkv5`` architecture plugin: x052 key layout, detection, building.

An architecture is recognised from a state dict's key names and shapes
alone (as RWKV-LM and the ``rwkv`` pip package do), and its sizes are read
from the tensors: n_layer = 1 + the largest block index, n_embd and vocab
from ``head.weight``, dim_att from ``att.key.weight``, dim_ffn from
``ffn.key.weight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from rwkv_plug.core.errors import ModelError
from rwkv_plug.core.interfaces import ModelArch
from rwkv_plug.models.layout import block_count, check_layout, scaled_groups
from rwkv_plug.models.rwkv5 import HEAD_SIZE, RWKV5, default_dim_ffn


def x052_shapes(
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    dim_att: int | None = None,
    dim_ffn: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """Every key of an official x052 state dict with its shape, in RWKV-LM order."""
    C, V = n_embd, vocab_size
    A = dim_att or C
    Fd = dim_ffn or default_dim_ffn(C)
    H = A // HEAD_SIZE
    shapes: dict[str, tuple[int, ...]] = {"emb.weight": (V, C)}
    for l in range(n_layer):
        b = f"blocks.{l}."
        if l == 0:
            shapes[b + "ln0.weight"] = shapes[b + "ln0.bias"] = (C,)
        for ln in ("ln1", "ln2"):
            shapes[f"{b}{ln}.weight"] = shapes[f"{b}{ln}.bias"] = (C,)
        for m in "kvrg":
            shapes[f"{b}att.time_mix_{m}"] = (1, 1, C)
        shapes[b + "att.time_decay"] = (H, HEAD_SIZE)
        shapes[b + "att.time_faaaa"] = (H, HEAD_SIZE)
        for proj in ("receptance", "key", "value"):
            shapes[f"{b}att.{proj}.weight"] = (A, C)
        shapes[b + "att.output.weight"] = (C, A)
        shapes[b + "att.gate.weight"] = (A, C)
        shapes[b + "att.ln_x.weight"] = shapes[b + "att.ln_x.bias"] = (A,)
        shapes[b + "ffn.time_mix_k"] = shapes[b + "ffn.time_mix_r"] = (1, 1, C)
        shapes[b + "ffn.key.weight"] = (Fd, C)
        shapes[b + "ffn.receptance.weight"] = (C, C)
        shapes[b + "ffn.value.weight"] = (C, Fd)
    shapes["ln_out.weight"] = shapes["ln_out.bias"] = (C,)
    shapes["head.weight"] = (V, C)
    return shapes


def check_sizes(n_layer: int, n_embd: int, vocab_size: int, dim_att: int | None = None) -> None:
    """Raise ``ModelError`` for sizes x052 cannot have."""
    if n_layer < 1:
        raise ModelError(f"n_layer must be at least 1, got {n_layer}")
    if vocab_size < 1:
        raise ModelError(f"vocab_size must be at least 1, got {vocab_size}")
    for key, value in (("n_embd", n_embd), ("dim_att", dim_att or n_embd)):
        if value < HEAD_SIZE or value % HEAD_SIZE:
            raise ModelError(
                f"{key} must be a positive multiple of the head size {HEAD_SIZE}, got {value}"
            )


class RWKV5Arch(ModelArch):
    """RWKV-v5.2 "Eagle" (official x052 state dict, head size 64)."""

    name = "rwkv5"
    tuning_modes = ("full", "state", "lora")
    wkv_layout = "kv"
    time_state_in_model_file = True  # the rwkv pip package's v5.2/v6 loader

    @classmethod
    def detect(cls, state_dict: Mapping[str, Any]) -> bool:
        """v5.2: has ``ln_x``, a 2-D ``att.time_decay`` of [H, 64], and no v6 ``time_maa``."""
        keys = list(state_dict)
        if any("time_maa" in k for k in keys) or not any(".ln_x." in k for k in keys):
            return False
        decays = [state_dict[k] for k in keys if k.endswith(".att.time_decay")]
        return bool(decays) and all(
            getattr(d, "dim", lambda: 0)() == 2 and d.shape[1] == HEAD_SIZE for d in decays
        )

    @classmethod
    def dims(cls, state_dict: Mapping[str, Any]) -> dict[str, int]:
        """n_layer, n_embd, vocab_size, dim_att, dim_ffn read from the tensors."""
        try:
            vocab, n_embd = state_dict["head.weight"].shape
            return {
                "n_layer": block_count(state_dict),
                "n_embd": int(n_embd),
                "vocab_size": int(vocab),
                "dim_att": int(state_dict["blocks.0.att.key.weight"].shape[0]),
                "dim_ffn": int(state_dict["blocks.0.ffn.key.weight"].shape[0]),
            }
        except (KeyError, ValueError) as exc:
            raise ModelError(f"x052 state dict lacks a key needed to read its sizes: {exc}") from None

    @classmethod
    def check_complete(cls, state_dict: Mapping[str, Any], source: str = "state dict") -> dict[str, int]:
        """Raise ``ModelError`` unless the keys and shapes are exactly x052; return the dims."""
        dims = cls.dims(state_dict)
        check_layout(state_dict, x052_shapes(**dims), "x052", source)
        return dims

    @classmethod
    def init_state_dict(cls, n_layer: int, n_embd: int, vocab_size: int, **options: Any) -> dict[str, torch.Tensor]:
        """A new x052 state dict (see :mod:`rwkv_plug.models.init`)."""
        from rwkv_plug.models.init import init_state_dict

        return init_state_dict(n_layer, n_embd, vocab_size, **options)

    @classmethod
    def param_groups(cls, named_params, weight_decay: float, layerwise_lr: bool) -> list[dict[str, Any]]:
        """With ``layerwise_lr``: ``time_decay`` at 2x, weight decay only on >=2-D ``.weight``
        matrices, the rest (``time_faaaa`` and the mixes included) at 1x. Without it, one
        group with the weight decay on every parameter.

        The per-parameter LR multipliers follow RWKV-LM's x052 trainer.
        """
        if not layerwise_lr:
            return super().param_groups(named_params, weight_decay, layerwise_lr)
        return scaled_groups(named_params, weight_decay, lambda name: 2.0 if name.endswith("time_decay") else 1.0)

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
    ) -> RWKV5:
        """Build an :class:`RWKV5` holding these weights.

        With ``copy=False`` the model may share memory with ``state_dict``
        (used when the dict was just read from a file).
        """
        dims = cls.dims(state_dict)
        for key, given in (("dim_att", dim_att), ("dim_ffn", dim_ffn)):
            if given is not None and given != dims[key]:
                raise ModelError(f"{source} has {key} {dims[key]}, but {key}={given} was requested")
        cls.check_complete(state_dict, source)
        with torch.device("meta"):  # no throw-away init; the weights come from the file
            model = RWKV5(**dims, kernel=kernel, dropout=dropout, grad_cp=grad_cp)
        weights = {k: v.to(dtype, copy=copy) for k, v in state_dict.items()}
        model.load_state_dict(weights, strict=True, assign=True)
        return model
