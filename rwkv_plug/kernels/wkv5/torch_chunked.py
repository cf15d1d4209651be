"""wkv5 by a chunked matrix form in pure PyTorch: the ``torch`` kernel, fast on CPU.

Inside a chunk of ``L`` tokens, with ``S`` the state at the chunk start::

    y_t  = (r_t * w^t) S  +  sum_{s<t} A[t, s] v_s  +  (r_t . u * k_t) v_t
    A[t, s] = sum_k r_t[k] k_s[k] w[k]^(t-1-s)
    S'   = w^L * S  +  sum_s (k_s * w^(L-1-s))^T v_s

Every power of ``w`` here has a non-negative exponent, so nothing can
overflow however fast the decay (``w`` may be 1e-3 or smaller in trained
models). The usual trick of splitting ``w^(t-1-s)`` into ``w^t * w^-(s+1)``
overflows for such decays, which is why the earlier trainer clamped ``w``
at 0.005 and changed results. ``A`` is built one sub-diagonal at a time
instead (``L`` small vector products), which is exact. Autograd gives all
six gradients, ``s0`` and the gradient flowing into ``sT`` included.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rwkv_plug.kernels.precision import compute_dtype
from rwkv_plug.kernels.wkv5.reference import check_shapes

#: Tokens per chunk. 32 balances the per-diagonal loop against the chunk scan.
CHUNK = 32



def _powers(w: Tensor, n: int) -> Tensor:
    """``P[d] = w^d`` for ``d = 0..n`` as ``(n + 1, H, N)``, by products (exact at w -> 0)."""
    ones = torch.ones_like(w).unsqueeze(0)
    if n == 0:
        return ones
    return torch.cat([ones, torch.cumprod(w.unsqueeze(0).expand(n, *w.shape), dim=0)])


def _gather_index(L: int, device: torch.device) -> Tensor:
    """Flat positions in ``D`` (row d+1 holds sub-diagonal d) of each ``A[t, s]``."""
    t = torch.arange(L, device=device).view(L, 1)
    s = torch.arange(L, device=device).view(1, L)
    return torch.where(s < t, (t - s) * L + s, s).flatten()  # s >= t reads row 0: zeros


def _chunks(r: Tensor, k: Tensor, v: Tensor, w: Tensor, s0: Tensor, L: int):
    """State part of wkv5 over ``T = nc * L`` tokens; inputs are ``(B, H, T, N)``."""
    B, H, T, N = r.shape
    nc = T // L
    r, k, v = (x.reshape(B, H, nc, L, N) for x in (r, k, v))
    P = _powers(w, L)  # (L+1, H, N)
    Pt = P[:L].permute(1, 0, 2).reshape(1, H, 1, L, N)  # w^t at row t

    # Intra-chunk attention, built one sub-diagonal at a time: D[d, s] = A[s + d + 1, s].
    diags = [r.new_zeros(B, H, nc, L)]  # row 0 stays zero: the slot for s >= t
    for d in range(L - 1):
        wd = P[d].view(1, H, 1, 1, N)
        diag = (r[..., d + 1 :, :] * wd * k[..., : L - 1 - d, :]).sum(-1)  # (B, H, nc, L-1-d)
        diags.append(torch.nn.functional.pad(diag, (0, d + 1)))
    D = torch.stack(diags, dim=-2).flatten(-2)  # (B, H, nc, L * L)
    A = D.index_select(-1, _gather_index(L, r.device)).view(B, H, nc, L, L)
    y = A @ v  # (B, H, nc, L, N)

    # Chunk-start states: one small sequential scan over chunks.
    k_end = k * Pt.flip(-2)  # k_s * w^(L-1-s)
    dS = k_end.transpose(-1, -2) @ v  # (B, H, nc, N, N)
    wL = P[L].view(1, H, N, 1)
    starts = []
    S = s0
    for dS_n in dS.unbind(2):  # unbind, not dS[:, :, n]: its backward is one stack
        starts.append(S)
        S = wL * S + dS_n
    y = y + (r * Pt) @ torch.stack(starts, dim=2)
    return y.reshape(B, H, T, N), S


def wkv5_chunked(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, s0: Tensor,
                 chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """``wkv5`` by the chunked matrix form; any ``T``, per-row ``s0``.

    Computes in fp32 (fp64 for fp64 inputs). Returns ``y`` in ``r``'s dtype and
    the final state in the compute dtype (fp32 unless inputs are fp64).
    """
    check_shapes(r, k, v, w, u, s0)
    # Autocast would run the matmuls below in bf16; this op promises fp32.
    with torch.autocast(device_type=r.device.type, enabled=False):
        return _wkv5_chunked(r, k, v, w, u, s0, chunk)


def _wkv5_chunked(r, k, v, w, u, s0, chunk):
    B, T, H, N = r.shape
    cdt = compute_dtype(r.dtype)
    rc, kc, vc = (x.to(cdt).transpose(1, 2) for x in (r, k, v))  # (B, H, T, N)
    wc, uc, S = w.to(cdt), u.to(cdt), s0.to(cdt)
    parts = []
    main = T - T % chunk
    for lo, hi, L in ((0, main, chunk), (main, T, T - main)):
        if hi > lo:  # full chunks, then one shorter tail chunk
            y, S = _chunks(rc[:, :, lo:hi], kc[:, :, lo:hi], vc[:, :, lo:hi], wc, S, L)
            parts.append(y)
    y = torch.cat(parts, dim=2) if parts else rc.new_zeros(B, H, 0, N)
    # Bonus of the current token: (r_t . u * k_t) v_t.
    y = y + (rc * uc.view(1, H, 1, N) * kc).sum(-1, keepdim=True) * vc
    return y.transpose(1, 2).to(r.dtype), S
