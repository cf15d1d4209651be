"""Helpers shared by the architectures: block counts, layout checks, optimizer groups."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rwkv_plug.core.errors import ModelError

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def block_count(state_dict: Mapping[str, Any]) -> int:
    """1 + the largest ``blocks.N.`` index (0 when there is none)."""
    blocks = [int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))]
    return 1 + max(blocks) if blocks else 0


def common_size(state_dict: Mapping[str, Any], suffix: str, dim: int) -> int:
    """The size along ``dim`` that most ``*suffix`` tensors share (KeyError when there is none).

    Reading a width from the majority of layers, not from layer 0, makes one
    odd layer the one a shape check names.
    """
    sizes = Counter(int(t.shape[dim]) for k, t in state_dict.items() if k.endswith(suffix) and t.dim() > dim)
    if not sizes:
        raise KeyError(f"blocks.N{suffix}")
    return sizes.most_common(1)[0][0]


def check_layout(state_dict: Mapping[str, Any], want: Mapping[str, tuple[int, ...]], what: str, source: str) -> None:
    """Raise one ``ModelError`` naming the missing, unexpected and wrongly shaped keys."""
    missing = [k for k in want if k not in state_dict]
    extra = [k for k in state_dict if k not in want]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} (expected {want[k]})"
        for k in want
        if k in state_dict and tuple(state_dict[k].shape) != want[k]
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            problems.append(f"{label}: {', '.join(items[:5])}{more}")
    if problems:
        raise ModelError(f"{source} is not a complete {what} model: {'; '.join(problems)}")


def is_weight_matrix(name: str, p: Any) -> bool:
    """A ``.weight`` of at least 2 dimensions after squeezing: projections, embedding, head."""
    return name.endswith(".weight") and p.squeeze().dim() >= 2


def scaled_groups(
    named_params: Iterable[tuple[str, Any]],
    weight_decay: float,
    lr_scale: Callable[[str], float],
    decays: Callable[[str, Any], bool] = is_weight_matrix,
) -> list[dict[str, Any]]:
    """Groups by LR multiplier, plus ``decay`` for the parameters ``decays`` accepts.

    ``lr_scale(name)`` gives a parameter's multiplier; a decayed parameter is
    trained at 1x. Group names: ``decay``, ``1x``, ``2x``, ... (trainable
    parameters only; empty groups are left out).
    """
    groups: dict[str, dict[str, Any]] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        scale = lr_scale(name)
        key = "decay" if weight_decay > 0 and scale == 1.0 and decays(name, p) else f"{scale:g}x"
        group = groups.setdefault(key, {"params": [], "lr_scale": scale, "name": key,
                                        "weight_decay": weight_decay if key == "decay" else 0.0})
        group["params"].append(p)
    return sorted(groups.values(), key=lambda g: (g["name"] == "decay", g["lr_scale"]))
