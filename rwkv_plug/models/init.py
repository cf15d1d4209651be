"""Fresh x052 weights, as the earlier trainer's ``init_model.py`` makes them.

With layer ``l`` of ``L``: r0 = l / (L - 1) grows from 0 to 1 with depth,
r1 = 1 - l / L shrinks from 1 towards 0, d_i = i / C over the channels.
For ``L == 1`` the earlier formula divides by zero; we use r0 = 0, the value
every model gives its first layer (documented in docs/model_files.md).
"""

from __future__ import annotations

import torch

from rwkv_plug.models.arch import check_sizes, x052_shapes

#: Matrices that start at zero, so every block starts as the identity.
_ZERO = (".att.output.", ".ffn.value.", ".ffn.receptance.")


def layer_ratios(layer: int, n_layer: int) -> tuple[float, float]:
    """``(r0, r1)`` for one layer; r0 = 0 for a one-layer model."""
    r0 = layer / (n_layer - 1) if n_layer > 1 else 0.0
    r1 = 1.0 - layer / n_layer
    return r0, r1


def _time_params(layer: int, n_layer: int, C: int, A: int) -> dict[str, torch.Tensor]:
    r0, r1 = layer_ratios(layer, n_layer)
    d = torch.arange(C, dtype=torch.float64) / C  # (C,)
    n = torch.arange(A, dtype=torch.float64)
    frac = n / (A - 1) if A > 1 else torch.zeros_like(n)
    H = A // 64
    p = {
        "att.time_mix_k": d.pow(r1),
        "att.time_mix_v": d.pow(r1) + 0.3 * r0,
        "att.time_mix_r": d.pow(0.5 * r1),
        "att.time_mix_g": d.pow(0.5 * r1),
        "ffn.time_mix_k": d.pow(r1),
        "ffn.time_mix_r": d.pow(r1),
    }
    out = {k: v.view(1, 1, C) for k, v in p.items()}
    out["att.time_decay"] = (-6 + 5 * frac.pow(0.7 + 1.3 * r0)).view(H, 64)
    out["att.time_faaaa"] = (r0 * (1 - frac) + 0.1 * (((n + 1) % 3) - 1)).view(H, 64)
    return out


def _orthogonal(rows: int, cols: int, scale: float, generator: torch.Generator | None) -> torch.Tensor:
    w = torch.empty(rows, cols)
    if scale == 0:
        return w.zero_()
    gain = (rows / cols) ** 0.5 if rows > cols else 1.0
    return torch.nn.init.orthogonal_(w, gain=gain * scale, generator=generator)


def init_state_dict(
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    emb_scale: float = 1e-4,
    dim_att: int | None = None,
    dim_ffn: int | None = None,
    seed: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """A new x052 state dict (CPU, bf16 by default) with the §4.4 initialisation."""
    check_sizes(n_layer, n_embd, vocab_size, dim_att)
    shapes = x052_shapes(n_layer, n_embd, vocab_size, dim_att, dim_ffn)
    C, A = n_embd, dim_att or n_embd
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    time = {l: _time_params(l, n_layer, C, A) for l in range(n_layer)}
    sd: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else -1
        local = name.split(".", 2)[2] if layer >= 0 else name
        if local in time.get(layer, {}):
            t = time[layer][local]
        elif name.endswith("ln_x.weight"):
            t = torch.full(shape, ((layer + 1) / n_layer) ** 0.7)
        elif ".ln" in name or name.startswith("ln_"):
            t = torch.ones(shape) if name.endswith(".weight") else torch.zeros(shape)
        elif name == "emb.weight":
            t = torch.empty(shape).uniform_(-emb_scale, emb_scale, generator=gen)
        else:  # a projection matrix (rows, cols)
            scale = 0.0 if any(z in name for z in _ZERO) else 0.5 if name == "head.weight" else 1.0
            t = _orthogonal(shape[0], shape[1], scale, gen)
        sd[name] = t.to(dtype).contiguous()
    return sd


def count_params(state_dict: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state_dict.values())
