"""wkv5 by a chunked matrix form in pure PyTorch: the ``torch`` kernel, fast on CPU.

Cut the sequence into ``nc`` chunks of ``L`` tokens. With ``S_n`` the state
at the start of chunk ``n``, the recurrence unrolls inside a chunk to::

    y_t   = (r_t * w^t) S_n  +  sum_{s<t} A[t, s] v_s  +  (r_t . u * k_t) v_t
    A[t, s] = sum_k r_t[k] k_s[k] w[k]^(t-1-s)
    S_n+1 = w^L * S_n  +  D_n,      D_n = sum_s (k_s * w^(L-1-s))^T v_s

Every power of ``w`` here has a non-negative exponent, so nothing can
overflow however fast the decay (``w`` may be 1e-3 or smaller in trained
models). The usual trick of splitting ``w^(t-1-s)`` into ``w^t * w^-(s+1)``
overflows for such decays, which is why the earlier trainer clamped ``w``
at 0.005 and changed results. ``A`` is built one sub-diagonal at a time
instead (``L`` small vector products), which is exact.

The chunk-start states are a first-order linear recurrence in ``n`` with the
constant per-row factor ``a = w^L``. Composing two steps of ``S -> a S + D``
gives another such step (factor ``a^2``), so all ``S_n`` come from a
log-depth scan over the chunk axis: ``ceil(log2 nc)`` whole-tensor updates
instead of ``nc`` small ones (:func:`_scan`); its gradient is the same scan
run in reverse (:class:`_ChunkScan`). A state reset at a chunk's start (packed
records, :mod:`rwkv_plug.kernels.resets`) makes that chunk's step the constant map
to the fresh state, which is still a step of this form (factor 0), so the reset
path is the same scan with per-row, per-chunk factors: no per-chunk loop. Autograd
gives all six gradients, ``s0`` and the gradient flowing into ``sT`` included.

The three products per chunk go through :func:`~rwkv_plug.kernels.precision.matmul`
at the precision ``model.wkv_precision`` chooses (``docs/kernels.md``).

Idea credit: splitting a decayed linear recurrence into intra-chunk products
plus a carried chunk state is the chunked form of gated linear attention
(e.g. flash-linear-attention's ``chunk`` kernels), and the log-depth scan
is Hillis and Steele's doubling scan (with resets it is a segmented scan,
Blelloch 1990, "Prefix Sums and Their Applications"); the sub-diagonal build of ``A`` and
the scan over chunk states with its reverse-scan gradient are this project's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rwkv_plug.kernels.precision import compute_dtype, matmul, uses_tf32
from rwkv_plug.kernels.resets import chunk_flags
from rwkv_plug.kernels.wkv5.reference import check_shapes

#: Tokens per chunk. 32 balances the per-diagonal loop against the chunk products.
CHUNK = 32


def _powers(w: Tensor, n: int) -> Tensor:
    """``P[d] = w^d`` for ``d = 0..n`` as ``(n + 1, *w.shape)``, by products (exact at w -> 0)."""
    ones = torch.ones_like(w).unsqueeze(0)
    if n == 0:
        return ones
    return torch.cat([ones, torch.cumprod(w.unsqueeze(0).expand(n, *w.shape), dim=0)])


def _gather_index(L: int, device: torch.device) -> Tensor:
    """Flat positions in ``D`` (row d+1 holds sub-diagonal d) of each ``A[t, s]``."""
    t = torch.arange(L, device=device).view(L, 1)
    s = torch.arange(L, device=device).view(1, L)
    return torch.where(s < t, (t - s) * L + s, s).flatten()  # s >= t reads row 0: zeros


def _intra(r: Tensor, k: Tensor, P: Tensor) -> Tensor:
    """``A`` of every chunk, ``(B, H, nc, L, L)``; ``r, k`` are ``(B, H, nc, L, N)``."""
    B, H, nc, L, N = r.shape
    rows = [r.new_zeros(B, H, nc, L)]  # row 0 stays zero: the slot for s >= t
    for d in range(L - 1):  # sub-diagonal d: A[s + d + 1, s]
        wd = P[d].view(1, H, 1, 1, N)
        diag = (r[..., d + 1 :, :] * wd * k[..., : L - 1 - d, :]).sum(-1)  # (B, H, nc, L-1-d)
        rows.append(torch.nn.functional.pad(diag, (0, d + 1)))
    flat = torch.stack(rows, dim=-2).flatten(-2)  # (B, H, nc, L * L)
    return flat.index_select(-1, _gather_index(L, r.device)).view(B, H, nc, L, L)


def _scan(D: Tensor, a: Tensor, s0: Tensor) -> Tensor:
    """Every state after a chunk of ``S_n+1 = a_n * S_n + D_n`` (no autograd): ``(B, H, nc, N, N)``.

    ``D`` is ``(B, H, nc, N, N)``, ``a`` ``(B or 1, H, nc, N, 1)`` (it scales rows),
    ``s0`` ``(B, H, N, N)``. Solved as ``S_n+1 = A_n s0 + X_n`` with the inclusive
    scans ``A_n = a_n ... a_0`` and ``X_n = sum_(m<=n) a_n ... a_(m+1) D_m``: after
    the step of span ``h`` each holds the terms ``m > n - 2h``. Only products of the
    factors, never a quotient, so a factor of 0 (a reset) is exact.
    """
    nc = D.shape[2]
    X, A, h = D.clone(), a.expand(-1, -1, nc, -1, -1).clone(), 1
    while h < nc:  # each right side is read whole before the in-place update
        X[:, :, h:] += A[:, :, h:] * X[:, :, : nc - h]
        A[:, :, h:] = A[:, :, h:] * A[:, :, : nc - h]
        h *= 2
    return X.add_(A * s0.unsqueeze(2))


class _ChunkScan(torch.autograd.Function):
    """The chunk-start states of ``S -> a S + D``, restarting where ``flags`` say (see below).

    With ``P_n`` the state reaching chunk ``n`` (``P_0 = s0``) and ``f_n`` its row's
    reset flag (``c_n = 1 - f_n``), chunk ``n`` starts from ``S_n = c_n P_n + f_n F``
    (``F`` the fresh state) and ``P_n+1 = a S_n + D_n = (a c_n) P_n + (D_n + f_n a F)``:
    a linear recurrence whose factor is 0 across a reset, so one :func:`_scan` gives
    every ``P_n`` however many resets there are. The backward is the same scan run in
    reverse, with ``G_n = dL/dP_n`` (``G_nc = dL/dsT``)::

        G_n = (a c_n) G_(n+1) + c_n dL/dS_n,     ds0 = G_0,   dD_n = G_(n+1)
        da  = sum_(b, n, v) G_(n+1) * S_n,       dF  = sum_n f_n (dL/dS_n + a G_(n+1))

    Only the start states are kept for the backward (the product with ``r``
    keeps them anyway), not one tensor per step of the scan.
    """

    @staticmethod
    def forward(ctx, D, a, s0, flags, fresh):
        a_ = a.view(1, a.shape[0], 1, a.shape[1], 1)  # (1, H, 1, N, 1): scales rows
        ctx.fresh_shape = None if fresh is None else fresh.shape
        fresh = None if fresh is None else fresh.expand_as(s0).unsqueeze(2)  # (B, H, 1, N, N)
        if flags is None:
            keep = None
            P = _scan(D, a_, s0)
        else:
            keep = (~flags).to(D.dtype).view(*flags.shape[:1], 1, flags.shape[1], 1, 1)  # (B, 1, nc, 1, 1)
            fed = D if fresh is None else D + (1 - keep) * (a_ * fresh)
            P = _scan(fed, a_ * keep, s0)
        starts = torch.cat([s0.unsqueeze(2), P[:, :, :-1]], dim=2)  # P_0 .. P_(nc-1)
        if keep is not None:
            starts = starts * keep
            if fresh is not None:
                starts = starts + (1 - keep) * fresh
        ctx.save_for_backward(a, starts, keep)
        return starts, P[:, :, -1]

    @staticmethod
    @once_differentiable
    def backward(ctx, g_starts, g_sT):
        a, starts, keep = ctx.saved_tensors
        a_ = a.view(1, a.shape[0], 1, a.shape[1], 1)
        g_starts = torch.zeros_like(starts) if g_starts is None else g_starts
        g_sT = starts.new_zeros(starts[:, :, 0].shape) if g_sT is None else g_sT
        fed, factor = (g_starts, a_) if keep is None else (g_starts * keep, a_ * keep)
        # reversed in n, G follows the forward recurrence: from G_nc, factors and inputs n = nc-1 .. 0
        G = _scan(fed.flip(2), factor.flip(2), g_sT).flip(2)  # index n holds G_n, n = 0 .. nc-1
        g_after = torch.cat([G[:, :, 1:], g_sT.unsqueeze(2)], dim=2)  # index n holds G_(n+1)
        da = (g_after * starts).sum((0, 2, 4))
        g_fresh = None
        if ctx.fresh_shape is not None and ctx.needs_input_grad[4]:
            g_fresh = ((1 - keep) * (g_starts + a_ * g_after)).sum(2).sum_to_size(ctx.fresh_shape)
        return g_after, da, G[:, :, 0], None, g_fresh


def _chunks(r: Tensor, k: Tensor, v: Tensor, w: Tensor, s0: Tensor, L: int, tf32: bool,
            flags: Tensor | None = None, fresh: Tensor | None = None):
    """State part of wkv5 over ``T = nc * L`` tokens; inputs are ``(B, H, T, N)``;
    ``flags`` (B, nc): chunks that start from ``fresh`` (see :mod:`rwkv_plug.kernels.resets`)."""
    B, H, T, N = r.shape
    nc = T // L
    r, k, v = (x.reshape(B, H, nc, L, N) for x in (r, k, v))
    P = _powers(w, L)  # (L+1, H, N)
    w_t = P[:L].permute(1, 0, 2).reshape(1, H, 1, L, N)  # row t: w^t
    y = matmul(_intra(r, k, P), v, tf32)  # within the chunk
    D = matmul((k * w_t.flip(-2)).transpose(-1, -2), v, tf32)  # (B, H, nc, N, N)
    starts, sT = _ChunkScan.apply(D, P[L], s0, flags, fresh)
    y = y + matmul(r * w_t, starts, tf32)  # from the chunk's start state
    return y.reshape(B, H, T, N), sT


def wkv5_chunked(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, s0: Tensor,
                 chunk: int = CHUNK, precision: str = "auto", resets: Tensor | None = None,
                 s_reset: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``wkv5`` by the chunked matrix form; any ``T``, per-row ``s0``.

    Computes in fp32 (fp64 for fp64 inputs), with the matrix products in IEEE
    fp32 or TF32 as ``precision`` (``auto``, ``fp32``, ``tf32``) says. Returns
    ``y`` in ``r``'s dtype and the final state in the compute dtype.
    ``resets``/``s_reset``: :mod:`rwkv_plug.kernels.resets`, flags on multiples of ``chunk`` only.
    """
    check_shapes(r, k, v, w, u, s0)
    tf32 = uses_tf32(precision, r.dtype)
    flags = None if resets is None else chunk_flags(resets, chunk, r.shape[1], "torch")
    # Autocast would run the products below in bf16; the precision is ours to choose.
    with torch.autocast(device_type=r.device.type, enabled=False):
        return _wkv5_chunked(r, k, v, w, u, s0, chunk, tf32, flags, s_reset)


def _wkv5_chunked(r, k, v, w, u, s0, chunk, tf32, flags=None, fresh=None):
    B, T, H, N = r.shape
    cdt = compute_dtype(r.dtype)
    rc, kc, vc = (x.to(cdt).transpose(1, 2) for x in (r, k, v))  # (B, H, T, N)
    wc, uc, S = w.to(cdt), u.to(cdt), s0.to(cdt)
    fresh = None if fresh is None else fresh.to(cdt)
    parts = []
    main = T - T % chunk
    for lo, hi, L in ((0, main, chunk), (main, T, T - main)):
        if hi > lo:  # full chunks, then one shorter tail chunk
            f = None if flags is None else flags[:, lo // chunk : -(-hi // chunk)]
            y, S = _chunks(rc[:, :, lo:hi], kc[:, :, lo:hi], vc[:, :, lo:hi], wc, S, L, tf32, f, fresh)
            parts.append(y)
    y = torch.cat(parts, dim=2) if parts else rc.new_zeros(B, H, 0, N)
    # Bonus of the current token: (r_t . u * k_t) v_t.
    y = y + (rc * uc.view(1, H, 1, N) * kc).sum(-1, keepdim=True) * vc
    return y.transpose(1, 2).to(r.dtype), S
