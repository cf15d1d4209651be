"""The ``wkv5`` op contract, shared by every kernel plugin.

Notation follows RWKV: per head ``h`` the state ``S`` is an ``N x N`` matrix
indexed ``[k, v]``. For each time step ``t``::

    y_t[v]  = sum_k r_t[k] * (S[k, v] + u[k] * k_t[k] * v_t[v])
    S[k, v] <- w[k] * S[k, v] + k_t[k] * v_t[v]

Inputs (all on one device):

    r, k, v : (B, T, H, N)   receptance, key, value
    w       : (H, N)         per-channel decay factor in (0, 1), constant over time
                             (v5; v6 will pass (B, T, H, N) per-token decays)
    u       : (H, N)         per-channel bonus for the current token
    s0      : (B, H, N, N)   initial state, float32, one per batch row

Outputs:

    y  : (B, T, H, N)  in the dtype of ``r``
    sT : (B, H, N, N)  float32 final state

Every kernel returns gradients for all six inputs, ``s0`` included, and
honours the gradient flowing into ``sT``. That is what makes exact BPTT
across chunks possible. A kernel whose caps declare ``resets`` also takes
``resets``/``s_reset`` (:mod:`rwkv_plug.kernels.resets`). :func:`wkv5_recurrent` below is the executable
spec: slow, obvious, and used in fp64 by the conformance suite.
"""

from __future__ import annotations

import torch

from rwkv_plug.kernels.resets import restart


def wkv5_recurrent(r, k, v, w, u, s0, resets=None, s_reset=None):
    """Per-timestep reference recurrence; differentiable by plain autograd.

    ``resets`` (B, T) bool, at any position: the state becomes ``s_reset`` (zeros if None)
    before a flagged token's step.
    """
    B, T, H, N = r.shape
    state = s0.to(r.dtype) if r.dtype == torch.float64 else s0.float()
    cdt = state.dtype
    w_ = w.to(cdt).view(1, H, N, 1)  # decays rows k
    u_ = u.to(cdt).view(1, H, N, 1)
    ys = []
    for t in range(T):
        if resets is not None:
            state = restart(state, resets[:, t], s_reset)
        rt, kt, vt = (x[:, t].to(cdt) for x in (r, k, v))  # (B, H, N)
        kv = kt.unsqueeze(-1) * vt.unsqueeze(-2)  # (B, H, N, N) = k^T v
        ys.append(torch.einsum("bhk,bhkv->bhv", rt, state + u_ * kv))
        state = w_ * state + kv
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(B, 0, H, N, dtype=cdt)
    return y.to(r.dtype), state


def check_shapes(r, k, v, w, u, s0) -> None:
    """Raise ``ValueError`` with a precise message if shapes break the contract."""
    if r.dim() != 4:
        raise ValueError(f"r must be (B, T, H, N), got {tuple(r.shape)}")
    B, T, H, N = r.shape
    for name, x in (("k", k), ("v", v)):
        if tuple(x.shape) != (B, T, H, N):
            raise ValueError(f"{name} must be {(B, T, H, N)}, got {tuple(x.shape)}")
    for name, x in (("w", w), ("u", u)):
        if tuple(x.shape) != (H, N):
            raise ValueError(f"{name} must be {(H, N)}, got {tuple(x.shape)}")
    if tuple(s0.shape) != (B, H, N, N):
        raise ValueError(f"s0 must be {(B, H, N, N)}, got {tuple(s0.shape)}")
