"""The ``wkv7`` op contract (RWKV-7), shared by every kernel that implements it.

Per head the state ``S`` is an ``N x N`` matrix indexed ``[v, k]`` (values
are rows, keys are columns: the official and ``rwkv`` pip layout). For each
time step ``t``::

    S_t = S_(t-1) diag(w_t) + (S_(t-1) a_t) b_t^T + v_t k_t^T
    y_t = S_t r_t

Inputs (all on one device):

    r, w, k, v, a, b : (B, T, H, N)  receptance, decay factor in (0, 1], key, value,
                                     and the two vectors of the rank-one state edit
                                     (the model passes a = -kk, b = kk * a)
    s0               : (B, H, N, N)  initial state [v, k], float32, one per batch row

Outputs:

    y  : (B, T, H, N)  in the dtype of ``r``
    sT : (B, H, N, N)  float32 final state (fp64 for fp64 inputs)

Every kernel returns gradients for all seven inputs, ``s0`` included, and
honours the gradient flowing into ``sT``: chaining two calls through the
state is the same function as one call over the concatenation. A kernel whose
caps declare ``resets`` also takes ``resets``/``s_reset``
(:mod:`rwkv_plug.kernels.resets`).
:func:`wkv7_recurrent` is the executable spec: slow, obvious, per step.
"""

from __future__ import annotations

import torch

from rwkv_plug.kernels.precision import compute_dtype
from rwkv_plug.kernels.resets import restart


def wkv7_recurrent(r, w, k, v, a, b, s0, resets=None, s_reset=None):
    """Per-timestep reference recurrence; differentiable by plain autograd.

    ``resets`` (B, T) bool, at any position: the state becomes ``s_reset`` (zeros if None)
    before a flagged token's step.
    """
    B, T, H, N = r.shape
    cdt = compute_dtype(r.dtype)
    state = s0.to(cdt)  # (B, H, Nv, Nk)
    ys = []
    for t in range(T):
        if resets is not None:
            state = restart(state, resets[:, t], s_reset)
        rt, wt, kt, vt, at, bt = (x[:, t].to(cdt) for x in (r, w, k, v, a, b))  # (B, H, N)
        sa = torch.einsum("bhvk,bhk->bhv", state, at)  # S a
        state = state * wt.unsqueeze(-2) + sa.unsqueeze(-1) * bt.unsqueeze(-2) \
            + vt.unsqueeze(-1) * kt.unsqueeze(-2)
        ys.append(torch.einsum("bhvk,bhk->bhv", state, rt))
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(B, 0, H, N, dtype=cdt)
    return y.to(r.dtype), state


def check_shapes(r, w, k, v, a, b, s0) -> None:
    """Raise ``ValueError`` with a precise message if shapes break the contract."""
    if r.dim() != 4:
        raise ValueError(f"r must be (B, T, H, N), got {tuple(r.shape)}")
    B, T, H, N = r.shape
    for name, x in (("w", w), ("k", k), ("v", v), ("a", a), ("b", b)):
        if tuple(x.shape) != (B, T, H, N):
            raise ValueError(f"{name} must be {(B, T, H, N)}, got {tuple(x.shape)}")
    if tuple(s0.shape) != (B, H, N, N):
        raise ValueError(f"s0 must be {(B, H, N, N)}, got {tuple(s0.shape)}")
