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
run in reverse (:class:`_ChunkScan`). Autograd gives all six gradients, ``s0``
and the gradient flowing into ``sT`` included.

The three products per chunk go through :func:`~rwkv_plug.kernels.precision.matmul`
at the precision ``model.wkv_precision`` chooses (``docs/kernels.md``).

Idea credit: splitting a decayed linear recurrence into intra-chunk products
plus a carried chunk state is the chunked form of gated linear attention
(e.g. flash-linear-attention's ``chunk`` kernels), and the log-depth scan
is Hillis and Steele's doubling scan; the sub-diagonal build of ``A`` and
the scan over chunk states with its reverse-scan gradient are this project's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rwkv_plug.kernels.precision import compute_dtype, matmul, uses_tf32
from rwkv_plug.kernels.resets import chunk_flags, restart
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


def _shift(x: Tensor, by: int) -> Tensor:
    """``x`` moved ``by`` places later along the chunk axis (dim 2), zeros in front."""
    front = x.new_zeros(*x.shape[:2], by, *x.shape[3:])
    return torch.cat([front, x[:, :, : x.shape[2] - by]], dim=2)


def _scan(D: Tensor, a: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
    """Every chunk's start state and the final state of ``S_n+1 = a * S_n + D_n`` (no autograd).

    ``D`` is ``(B, H, nc, N, N)``, ``a = w^L`` is ``(H, N)`` (it scales rows),
    ``s0`` is ``(B, H, N, N)``. Solved as ``S_n = a^n s0 + X_(n-1)``, where
    ``X_n = sum_(m<=n) a^(n-m) D_m`` is an inclusive scan: after the step of
    span ``h`` each ``X_n`` holds the terms ``m > n - 2h``; ``a^h`` for
    ``h = 1, 2, 4 ...`` is squared from ``a``, never a negative power.
    """
    nc = D.shape[2]
    X, a_h, h = D.clone(), a.view(1, -1, 1, a.shape[-1], 1), 1
    while h < nc:
        X[:, :, h:] += a_h * X[:, :, : nc - h]  # the right side is read whole before the add
        a_h, h = a_h * a_h, 2 * h
    a_n = _powers(a, nc).permute(1, 0, 2).unsqueeze(0).unsqueeze(-1)  # (1, H, nc+1, N, 1)
    starts = a_n[:, :, :nc] * s0.unsqueeze(2) + _shift(X, 1)
    return starts, a_n[:, :, nc] * s0 + X[:, :, -1]


class _ChunkScan(torch.autograd.Function):
    """:func:`_scan` with its own backward, which is the same scan run in reverse.

    With ``G_n = dL/dS_n`` in total (``S_0 = s0``, ``S_nc = sT``)::

        G_nc = dL/dsT,   G_n = a * G_(n+1) + dL/dstarts_n
        dD_n = G_(n+1),  ds0 = G_0,  da[k] = sum_(b, n, v) G_(n+1)[k, v] * S_n[k, v]

    Only the start states are kept for the backward (the product with ``r``
    keeps them anyway), not one tensor per step of the scan.
    """

    @staticmethod
    def forward(ctx, D, a, s0):
        starts, sT = _scan(D, a, s0)
        ctx.save_for_backward(a, starts)
        return starts, sT

    @staticmethod
    @once_differentiable
    def backward(ctx, g_starts, g_sT):
        a, starts = ctx.saved_tensors
        g_starts = torch.zeros_like(starts) if g_starts is None else g_starts
        g_sT = starts.new_zeros(starts[:, :, 0].shape) if g_sT is None else g_sT
        # reversed in n, G follows the forward recurrence: start G_nc, inputs dL/dstarts_(nc-1..0)
        g_after, g0 = _scan(g_starts.flip(2), a, g_sT)
        g_after = g_after.flip(2)  # index n holds G_(n+1)
        da = (g_after * starts).sum((0, 2, 4))
        return g_after, da, g0


def _restarting_scan(D: Tensor, a: Tensor, s0: Tensor, flags: Tensor, fresh: Tensor | None):
    """:func:`_scan` where chunk ``n`` starts from ``fresh`` for the rows ``flags[:, n]`` marks.

    One step per chunk, differentiated by autograd: the doubling scan's constant factor
    does not hold across a reset, and one ``N x N`` update per chunk is cheap.
    """
    a_ = a.view(1, -1, a.shape[-1], 1)  # scales rows
    starts, S = [], s0
    for n in range(D.shape[2]):
        S = restart(S, flags[:, n], fresh)
        starts.append(S)
        S = a_ * S + D[:, :, n]
    return torch.stack(starts, dim=2), S


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
    if flags is None:
        starts, sT = _ChunkScan.apply(D, P[L], s0)
    else:
        starts, sT = _restarting_scan(D, P[L], s0, flags, fresh)
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
