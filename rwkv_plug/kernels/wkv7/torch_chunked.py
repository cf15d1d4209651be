"""wkv7 by a chunked matrix form in pure PyTorch: the ``torch`` kernel, fast on CPU.

Per step ``S_t = S_(t-1) diag(w_t) + z_t b_t^T + v_t k_t^T`` with
``z_t = S_(t-1) a_t``. Given the ``z``'s this is a diagonal-decay linear
recurrence with two kinds of writes, so a chunk of ``L`` tokens starting
from state ``S`` gives, with ``E[t, s] = w_(s+1) ... w_t`` (``s <= t``, a
vector over keys) and ``g_t = w_0 ... w_t`` (products from the chunk start)::

    z_t = S (a_t g_(t-1)) + sum_(s<t) (a_t.E[t-1,s].b_s) z_s + (a_t.E[t-1,s].k_s) v_s
    y_t = S (r_t g_t)     + sum_(s<=t) (r_t.E[t,s].b_s) z_s + (r_t.E[t,s].k_s) v_s
    S'  = S diag(g_L) + sum_s z_s (b_s E[L,s])^T + v_s (k_s E[L,s])^T

The ``z`` rows solve one unit lower-triangular system per chunk, ``(I - A_ab) Z
= A' S^T + A_ak V``; splitting its right-hand side into the part that
multiplies ``S`` and the part that does not lets every chunk be solved at
once, leaving a scan over chunks of one ``N x N`` product each. (This is the
WY / UT-transform idea of chunked delta-rule attention, Yang et al. 2024,
"Parallelizing Linear Transformers with the Delta Rule over Sequence
Length", as used for RWKV-7 by flash-linear-attention.)

Every decay factor is a product of decays, never a quotient (the usual
``g_t / g_s`` overflows for fast decays), so nothing overflows however
small ``w`` is: exact for any ``w`` in (0, 1]. The products are an
``(L, L + 1, N)`` cumulative product per chunk, cheap at ``L = 16``; they
and the pair matrices built from them are recomputed in the backward
(activation checkpointing), so autograd keeps about four times the inputs'
size instead of about eighteen. The tail of a ``T`` that is not a multiple of ``L`` is padded with tokens that
leave the state unchanged (``w = 1``, everything else 0). Autograd gives
all seven gradients, ``s0`` and the gradient flowing into ``sT`` included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rwkv_plug.kernels.precision import compute_dtype, matmul, uses_tf32
from rwkv_plug.kernels.resets import chunk_flags, restart
from rwkv_plug.kernels.wkv7.reference import check_shapes

#: Tokens per chunk: the (L, L + 1, N) decay products cost about L per token.
CHUNK = 16
#: When every decay of a call is at least this, the chunk's decay ratios are formed as
#: g_t / g_s (g: cumulative products from the chunk start) inside small matrix products:
#: g >= 0.25^16 ~ 2e-10, so 1/g and the 1/g^2 of its gradient stay far from fp32's range
#: limits. RWKV-7's decays are >= exp(-e^-0.5) ~ 0.545, so models always take this path;
#: smaller decays take the product form, exact for any w.
FACTORED_MIN_DECAY = 0.25


def wkv7_chunked(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, s0: Tensor,
                 chunk: int = CHUNK, precision: str = "auto", resets: Tensor | None = None,
                 s_reset: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``wkv7`` by the chunked form; any ``T``, per-row ``s0``.

    Computes in fp32 (fp64 for fp64 inputs), with the matrix products in IEEE
    fp32 or TF32 as ``precision`` (``auto``, ``fp32``, ``tf32``) says; the
    decay products and the triangular solve are always fp32. Returns ``y`` in
    ``r``'s dtype and the final state in the compute dtype.
    ``resets``/``s_reset``: :mod:`rwkv_plug.kernels.resets`, flags on multiples of ``chunk`` only.
    """
    check_shapes(r, w, k, v, a, b, s0)
    tf32 = uses_tf32(precision, r.dtype)
    flags = None
    if resets is not None and r.shape[1] > 0:
        flags = chunk_flags(resets, max(1, min(chunk, r.shape[1])), r.shape[1], "torch")
    # Autocast would run the products below in bf16; the precision is ours to choose.
    with torch.autocast(device_type=r.device.type, enabled=False):
        return _wkv7_chunked(r, w, k, v, a, b, s0, chunk, tf32, flags, s_reset)


def _wkv7_chunked(r, w, k, v, a, b, s0, chunk, tf32, flags=None, fresh=None):
    B, T, H, N = r.shape
    cdt = compute_dtype(r.dtype)
    S = s0.to(cdt)
    if T == 0:
        return r.new_zeros(B, 0, H, N), S
    fresh = None if fresh is None else fresh.to(cdt)
    L = max(1, min(chunk, T))
    pad = -T % L
    nc = (T + pad) // L

    def prep(x: Tensor, fill: float) -> Tensor:  # (B, T, H, N) -> (B, H, nc, L, N)
        x = x.to(cdt).transpose(1, 2)
        if pad:  # padded tokens: w = 1, r = k = v = a = b = 0 leave the state as it is
            x = F.pad(x, (0, 0, 0, pad), value=fill)
        return x.reshape(B, H, nc, L, N)

    wc = prep(w, 1.0)
    rc, kc, vc, ac, bc = (prep(x, 0.0) for x in (r, k, v, a, b))
    y, S = _chunks(rc, wc, kc, vc, ac, bc, S, tf32, flags, fresh)
    y = y.reshape(B, H, nc * L, N)[:, :, :T].transpose(1, 2)
    return y.to(r.dtype), S


def _decay_products(w: Tensor) -> Tensor:
    """``P[..., t, j, :] = w_j * ... * w_t`` for ``j <= t`` (1 at ``j = t + 1``, else 0).

    ``w`` is ``(..., L, N)``; ``P`` is ``(..., L, L + 1, N)``. Built by a
    cumulative product, not by ``exp`` of differences of ``cumsum(log w)``:
    that form is as exact forward, but its decay gradient is a difference of
    O(1) terms divided by ``w``, all rounding error when ``w`` is ~1e-20.
    """
    L = w.shape[-2]
    t = torch.arange(L, device=w.device).view(L, 1)
    j = torch.arange(L + 1, device=w.device).view(1, L + 1)
    factors = torch.where((j <= t).unsqueeze(-1), w.unsqueeze(-2), 1.0)  # (..., L, L+1, N)
    return factors.cumprod(dim=-3).masked_fill((j > t + 1).unsqueeze(-1), 0.0)


def _within_chunk(r: Tensor, w: Tensor, k: Tensor, a: Tensor, b: Tensor):
    """The chunk-local pieces: the four ``(L, L)`` pair matrices and the decayed vectors."""
    P = _decay_products(w)  # (B, H, nc, L, L+1, N)
    E = P[..., 1:, :]  # E[t, s] = w_(s+1) ... w_t for s <= t, else 0
    # r_t.E[t,s].x_s and a_t.E[t-1,s].x_s for x = b, k: each (B, H, nc, L, L)
    rE = r.unsqueeze(-2) * E
    aE = a[..., 1:, :].unsqueeze(-2) * E[..., :-1, :, :]  # rows t = 1..L-1
    b_, k_ = b.unsqueeze(-3), k.unsqueeze(-3)
    A_rb, A_rk = (rE * b_).sum(-1), (rE * k_).sum(-1)
    A_ab, A_ak = (F.pad((aE * x).sum(-1), (0, 0, 1, 0)) for x in (b_, k_))  # row 0: no s < 0
    g = P[..., 0, :]  # w_0 ... w_t, the decay since the chunk start
    a_dec = a * F.pad(g[..., :-1, :], (0, 0, 1, 0), value=1.0)  # part of z_t read from S
    b_end, k_end = b * E[..., -1, :, :], k * E[..., -1, :, :]  # decayed to the chunk end
    return A_rb, A_rk, A_ab, A_ak, r * g, a_dec, b_end, k_end, g[..., -1, :]


def _within_chunk_factored(r: Tensor, w: Tensor, k: Tensor, a: Tensor, b: Tensor, tf32: bool):
    """:func:`_within_chunk` with ``E[t, s] = g_t / g_s``: (L, N) x (N, L) products, no (L, L, N).

    Only for decays bounded away from 0 (``FACTORED_MIN_DECAY``), where the ratio cannot
    overflow; every pair matrix is the same one as the product form's, to rounding.
    """
    g = torch.cumprod(w, dim=-2)  # (B, H, nc, L, N): w_0 ... w_t
    inv = 1.0 / g
    g_prev = F.pad(g[..., :-1, :], (0, 0, 1, 0), value=1.0)  # w_0 ... w_(t-1)
    r_dec, a_dec = r * g, a * g_prev
    b_in, k_in = (b * inv).transpose(-1, -2), (k * inv).transpose(-1, -2)  # (B, H, nc, N, L)
    A_rb, A_rk = (matmul(r_dec, x, tf32).tril() for x in (b_in, k_in))  # s <= t
    A_ab, A_ak = (matmul(a_dec, x, tf32).tril(-1) for x in (b_in, k_in))  # s < t
    g_end = g[..., -1, :]
    to_end = inv * g_end.unsqueeze(-2)  # w_(s+1) ... w_(L-1)
    return A_rb, A_rk, A_ab, A_ak, r_dec, a_dec, b * to_end, k * to_end, g_end


def _decays_known_bounded(w: Tensor) -> bool:
    """Whether every decay is at least ``FACTORED_MIN_DECAY`` (the factored form applies).

    Under ``FakeTensorMode`` (``rwkv-plug plan`` counts a step's memory with tensors that hold
    no data) the values are unknown; an RWKV-7 model's decays are always above the bound
    (``exp(-e^-0.5)`` ~ 0.545, models/rwkv7.py), so the factored path is the one a run takes.
    """
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(w) or bool(w.detach().min() >= FACTORED_MIN_DECAY)


def _chunks(r, w, k, v, a, b, s0, tf32, flags=None, fresh=None):
    """All inputs ``(B, H, nc, L, N)``; returns ``y`` of that shape and the final state.

    ``flags`` (B, nc): chunks that start from ``fresh`` (see :mod:`rwkv_plug.kernels.resets`).
    """
    L, N = r.shape[-2:]
    if _decays_known_bounded(w):
        parts = _within_chunk_factored(r, w, k, a, b, tf32)
    elif torch.is_grad_enabled():
        # Recompute the (L, L + 1, N) intermediates in the backward instead of keeping
        # them: ~L times the inputs' size, far more than everything else here.
        parts = checkpoint(_within_chunk, r, w, k, a, b, use_reentrant=False,
                           preserve_rng_state=False)
    else:
        parts = _within_chunk(r, w, k, a, b)
    A_rb, A_rk, A_ab, A_ak, r_dec, a_dec, b_end, k_end, g_end = parts

    def mm(x, y):
        return matmul(x, y, tf32)

    eye = torch.eye(L, dtype=r.dtype, device=r.device)
    rhs = torch.cat([a_dec, mm(A_ak, v)], dim=-1)  # (B, H, nc, L, 2N)
    sol = torch.linalg.solve_triangular(eye - A_ab, rhs, upper=False, unitriangular=True)
    Wz, Uz = sol[..., :N], sol[..., N:]  # z_t = Wz_t S^T + Uz_t

    # Chunk transition S' = S M + C, from the solved z's.
    M = torch.diag_embed(g_end) + mm(Wz.transpose(-1, -2), b_end)  # (B, H, nc, Nk, Nk)
    C = mm(Uz.transpose(-1, -2), b_end) + mm(v.transpose(-1, -2), k_end)  # (B, H, nc, Nv, Nk)
    # The transition is a full N x N product, so the chunks run one after another with or
    # without resets (a doubling scan would cost log2(nc) times the products); a reset is
    # one select before the chunks that some row restarts, found with a single host sync.
    restarts = [False] * M.shape[2] if flags is None else flags.any(0).tolist()
    starts = []
    S = s0
    for n, (M_n, C_n) in enumerate(zip(M.unbind(2), C.unbind(2))):  # unbind: its backward is one stack
        if restarts[n]:
            S = restart(S, flags[:, n], fresh)
        starts.append(S)
        S = mm(S, M_n) + C_n
    St = torch.stack(starts, dim=2).transpose(-1, -2)  # (B, H, nc, Nk, Nv): S^T per chunk
    Z = mm(Wz, St) + Uz
    y = mm(r_dec, St) + mm(A_rb, Z) + mm(A_rk, v)
    return y, S
