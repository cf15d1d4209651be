"""Fresh x070 weights with RWKV-LM's RWKV-7 initialisation.

With layer ``l`` of ``L`` and channel ``n`` of ``C`` (head size N = 64):
r0 = l / (L - 1) grows with depth (0 for a one-layer model), r1 = 1 - l / L
shrinks, ddd_n = n / C, lin_n = n / (C - 1) - 0.5, and the zigzag
z_n = ((n mod N) - (N - 1) / 2) / ((N - 1) / 2), zz = z |z|, repeats over
every head. The table of formulas is in docs/model_files.md.
"""

from __future__ import annotations

import torch

from rwkv_plug.models.arch7 import check_sizes, default_lora, x070_shapes
from rwkv_plug.models.init import _orthogonal, layer_ratios
from rwkv_plug.models.rwkv7 import HEAD_SIZE, LoraDims

#: Token-shift mix exponents p: x_m = 1 - ddd^(p r1).
_SHIFT_POWER = {"x_r": 0.2, "x_w": 0.9, "x_k": 0.7, "x_v": 0.7, "x_a": 0.9, "x_g": 0.2}
#: Matrices that start at zero: every block starts as the identity, the low-rank inputs as no-ops.
_ZERO = (".att.output.", ".ffn.value.", ".att.w1", ".att.a1", ".att.v1", ".att.g1")
#: Orthogonal gains of the other matrices (head: 0.5, times sqrt(V / C) when V > C, as every tall matrix).
_GAIN = {".att.key.": 0.1, ".att.w2": 0.1, ".att.a2": 0.1, ".att.v2": 0.1, ".att.g2": 0.1, "head.": 0.5}


def _layer_vectors(layer: int, n_layer: int, C: int) -> dict[str, torch.Tensor]:
    """The per-channel vectors of one layer, by local key."""
    r0, r1 = layer_ratios(layer, n_layer)
    n = torch.arange(C, dtype=torch.float64)
    ddd = n / C
    lin = n / (C - 1) - 0.5
    half = (HEAD_SIZE - 1) / 2
    z = ((n % HEAD_SIZE) - half) / half
    zz = z * z.abs()
    decay = -6 + 6 * (n / (C - 1)).pow(1 + r0**0.3)
    vec = {f"att.{m}": 1 - ddd.pow(p * r1) for m, p in _SHIFT_POWER.items()}
    vec |= {
        "att.w0": decay + 0.5 + 2.5 * zz,  # +0.5: the official softplus offset, kept for parity
        "att.a0": -0.19 + 0.3 * zz + 0.4 * lin,
        "att.v0": 0.73 - 0.4 * lin,
        "att.k_k": 0.71 - 0.1 * lin,
        "att.k_a": torch.full((C,), 1.02, dtype=torch.float64),
        "ffn.x_k": 1 - ddd.pow(r1**4),
    }
    return {k: v.view(1, 1, C) for k, v in vec.items()}


def init_state_dict(
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    emb_scale: float = 1e-4,
    lora: LoraDims | None = None,
    dim_ffn: int | None = None,
    seed: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """A new x070 state dict (CPU, bf16 by default); ``lora`` None = :func:`default_lora`."""
    lora = lora or default_lora(n_embd)
    check_sizes(n_layer, n_embd, vocab_size, lora)
    shapes = x070_shapes(n_layer, n_embd, vocab_size, lora, dim_ffn)
    C, H = n_embd, n_embd // HEAD_SIZE
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    vectors = {l: _layer_vectors(l, n_layer, C) for l in range(n_layer)}
    sd: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else -1
        local = name.split(".", 2)[2] if layer >= 0 else name
        if local in vectors.get(layer, {}):
            t = vectors[layer][local]
        elif local == "att.r_k":
            t = torch.full((H, HEAD_SIZE), -0.04, dtype=torch.float64)
        elif local == "att.ln_x.weight":
            t = torch.full(shape, ((layer + 1) / n_layer) ** 0.7, dtype=torch.float64)
        elif ".ln" in name or name.startswith("ln_"):
            t = torch.ones(shape) if name.endswith(".weight") else torch.zeros(shape)
        elif name == "emb.weight":
            t = torch.empty(shape).uniform_(-emb_scale, emb_scale, generator=gen)
        else:  # a matrix (rows, cols)
            scale = 0.0 if any(z in name for z in _ZERO) else next(
                (g for part, g in _GAIN.items() if part in name), 1.0)
            t = _orthogonal(shape[0], shape[1], scale, gen)
        sd[name] = t.to(dtype).contiguous()
    return sd
