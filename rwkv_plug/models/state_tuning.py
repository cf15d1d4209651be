"""State tuning: a trainable start state for every layer's WKV matrix (``model.tuning: state``).

The learned state lives on the model as ``model.tuned_state`` (a :class:`StartState`);
the model's ``zero_state`` returns it expanded over the batch, so every sample starts
from it, and the chunked BPTT engine gives it the exact gradient of every chunk like
any other parameter of the model. (Tuning only the initial state is RWKV-LM's v6
"state tuning" idea.)

A **state file** is a ``.pth`` of ``{"blocks.{i}.att.time_state": (H, N, N)}``, indexed
``[head, value, key]``: the layout RWKV-LM's state tuning writes and the ``rwkv`` pip
package reads for v5.2 and v6 models. Each architecture says how its own WKV state is
indexed (``ModelArch.wkv_layout``), and the file is converted to and from that.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from rwkv_plug.core.errors import ModelError

STATE_KEY = "blocks.{}.att.time_state"
_KEY = re.compile(r"blocks\.(\d+)\.att\.time_state")


class StartState(nn.Module):
    """One trainable (H, N, N) WKV start state per layer, in the model's own layout."""

    def __init__(self, shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.wkv = nn.ParameterList(nn.Parameter(torch.zeros(s, dtype=dtype)) for s in shapes)

    def batch(self, layer: int, batch_size: int, device=None) -> Tensor:
        """Layer ``layer``'s start state for a batch: (B, H, N, N), at least fp32.

        A copy, not a view of the parameter: kernels may write into their start state.
        """
        s = self.wkv[layer]
        dtype = torch.promote_types(s.dtype, torch.float32)
        return s.to(device=device, dtype=dtype).unsqueeze(0).expand(batch_size, *s.shape).clone()


def wkv_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """(H, N, N) of every layer's WKV state, read from ``model.zero_state`` (per layer:
    att_shift, wkv, ffn_shift)."""
    state = model.zero_state(1, device="cpu")
    return [tuple(state[i].shape[1:]) for i in range(1, len(state), 3)]


def _layout(model: nn.Module) -> str:
    from rwkv_plug.models.loading import arch_of

    return arch_of(model).wkv_layout


def _to_file(t: Tensor, layout: str) -> Tensor:
    """Model layout -> file layout ([head, value, key]); the same swap goes back."""
    return t.transpose(-1, -2) if layout == "kv" else t


def add_start_state(model: nn.Module, file_tensors: Mapping[str, Tensor] | None = None,
                    source: str = "state file") -> StartState:
    """Give ``model`` a start state (zeros, or a state file's tensors) and return it.

    Its parameters require grad; freezing the rest is the caller's business.
    """
    shapes = wkv_shapes(model)
    dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
    start = StartState(shapes, dtype)
    if file_tensors is not None:
        layout = _layout(model)
        check_state_file(file_tensors, shapes, source)
        with torch.no_grad():
            for i, p in enumerate(start.wkv):
                p.copy_(_to_file(file_tensors[STATE_KEY.format(i)], layout))
    device = next(model.parameters()).device
    model.tuned_state = start.to(device)
    return model.tuned_state


def check_state_file(tensors: Mapping[str, Tensor], shapes: list[tuple[int, ...]], source: str) -> None:
    """Raise ``ModelError`` unless ``tensors`` hold exactly one (H, N, N) state per layer."""
    want = {STATE_KEY.format(i): s for i, s in enumerate(shapes)}
    missing = [k for k in want if k not in tensors]
    extra = [k for k in tensors if k not in want]
    wrong = [f"{k} {tuple(tensors[k].shape)} (want {want[k]})" for k in want
             if k in tensors and tuple(tensors[k].shape) != want[k]]
    for label, items in (("lacks", missing), ("has unexpected keys", extra), ("has wrong shapes", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            raise ModelError(f"{source} {label} for this model ({len(shapes)} layers, state {shapes[0]}): "
                             f"{', '.join(items[:3])}{more}; use a state file exported from a run on this "
                             "base model")


def state_file_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The model's tuned start state in the state-file layout (detached, on the CPU)."""
    start = getattr(model, "tuned_state", None)
    if start is None:
        raise ModelError("the model has no tuned start state (model.tuning: state)")
    layout = _layout(model)
    return {STATE_KEY.format(i): _to_file(p.detach().cpu(), layout).contiguous() for i, p in enumerate(start.wkv)}


def from_checkpoint_tensors(tensors: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """State-file tensors from a checkpoint's ``tuned_state.wkv.{i}`` entries (model layout)."""
    found = {}
    for key, value in tensors.items():
        m = re.fullmatch(r"tuned_state\.wkv\.(\d+)", key)
        if m:
            found[STATE_KEY.format(int(m.group(1)))] = _to_file(value.detach().cpu(), layout).contiguous()
    return found


def read_state_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state file's tensors (read with ``weights_only``); ``ModelError`` if it is not one."""
    from rwkv_plug.models.io import read_torch_file

    if not Path(path).is_file():
        raise ModelError(f"state file '{path}' does not exist; write one with `rwkv-plug export` from a "
                         "model.tuning: state checkpoint")
    obj = read_torch_file(path)
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and _KEY.fullmatch(k) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ModelError(f"'{path}' is not a state file (expected only blocks.N.att.time_state tensors); "
                         "write one with `rwkv-plug export` from a model.tuning: state checkpoint")
    return dict(obj)


def load_state_file(model: nn.Module, path: str | os.PathLike) -> StartState:
    """Start ``model`` from the state file at ``path`` (for generation: no gradient)."""
    start = add_start_state(model, read_state_file(path), f"state file '{path}'")
    start.requires_grad_(False)
    return start


def save_state_file(tensors: Mapping[str, Tensor], path: str | os.PathLike, dtype: torch.dtype) -> Path:
    """Write a state file atomically."""
    from rwkv_plug.models.io import save_state_dict

    return save_state_dict({k: v.to(dtype) for k, v in tensors.items()}, path)
