"""Triton kernels for wkv5 (imported only when the triton kernel is first used).

See :mod:`rwkv_plug.kernels.wkv5.triton` for the formulation. Every kernel
walks one (batch row, head) over chunks of ``BT`` tokens and owns a slice of
the ``N x N`` state: a block of ``BV`` value columns (forward, ``dv``) or of
``BK`` key rows (``dr``, ``dk``), because those slices evolve independently.
That gives ``B * H * N / BV`` programs instead of ``B * H``.
"""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IS64: tl.constexpr, PREC: tl.constexpr):
    if IS64:
        out = tl.dot(a, b)
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out


@triton.jit
def _attn(q_ptr, k_ptr, lw_ptr, row, m, h, N: tl.constexpr, BT: tl.constexpr,
          BK: tl.constexpr, CDT: tl.constexpr):
    """A[t, s] = sum_k q_t[k] k_s[k] w[k]^(t-1-s) for s < t, else 0; exact for any w."""
    tt = tl.arange(0, BT)
    d = tt[:, None] - 1 - tt[None, :]
    dpos = tl.where(d >= 0, d, 0).to(CDT)
    A = tl.zeros((BT, BT), dtype=CDT)
    for kb in tl.static_range(0, N, BK):
        kk = kb + tl.arange(0, BK)
        lw = tl.load(lw_ptr + h * N + kk).to(CDT)
        qb = tl.load(q_ptr + row + kk[None, :], mask=m, other=0.0).to(CDT)
        kb_ = tl.load(k_ptr + row + kk[None, :], mask=m, other=0.0).to(CDT)
        dec = tl.exp(dpos[:, :, None] * lw[None, None, :])  # exponent >= 0: no overflow
        A += tl.sum(qb[:, None, :] * kb_[None, :, :] * dec, axis=2)
    return tl.where(d >= 0, A, 0.0).to(CDT)


@triton.jit
def _fwd(r_ptr, k_ptr, v_ptr, lw_ptr, s0_ptr, y_ptr, sT_ptr, T,
         H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
         BK: tl.constexpr, IS64: tl.constexpr, PREC: tl.constexpr):
    # y = (r * w^t) S + A v ;  S <- w^L * S + (k * w^(L-1-s))^T v, on columns vv of S.
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    pid, pv = tl.program_id(0), tl.program_id(1)
    b, h = pid // H, pid % H
    n, tt = tl.arange(0, N), tl.arange(0, BT)
    vv = pv * BV + tl.arange(0, BV)
    lw = tl.load(lw_ptr + h * N + n).to(CDT)
    s_off = pid.to(tl.int64) * N * N + n[:, None] * N + vv[None, :]
    S = tl.load(s0_ptr + s_off).to(CDT)  # (N, BV) = S[:, vv]
    w_t = tl.exp(tt.to(CDT)[:, None] * lw[None, :])  # (BT, N) w^t
    base = b.to(tl.int64) * T * H * N + h * N
    for c in range(0, T, BT):
        valid = (c + tt) < T
        L = tl.minimum(T - c, BT)
        row = base + (c + tt)[:, None].to(tl.int64) * (H * N)
        m = valid[:, None]
        rc = tl.load(r_ptr + row + n[None, :], mask=m, other=0.0).to(CDT)
        kc = tl.load(k_ptr + row + n[None, :], mask=m, other=0.0).to(CDT)
        vc = tl.load(v_ptr + row + vv[None, :], mask=m, other=0.0).to(CDT)
        A = _attn(r_ptr, k_ptr, lw_ptr, row, m, h, N, BT, BK, CDT)
        y = _dot(rc * w_t, S, IS64, PREC) + _dot(A, vc, IS64, PREC)
        tl.store(y_ptr + row + vv[None, :], y, mask=m)
        e_end = tl.where(valid, L - 1 - tt, 0).to(CDT)
        k_end = kc * tl.exp(e_end[:, None] * lw[None, :])
        S = S * tl.exp(L.to(CDT) * lw)[:, None] + _dot(tl.trans(k_end), vc, IS64, PREC)
    tl.store(sT_ptr + s_off, S)


@triton.jit
def _bwd_dr(k_ptr, v_ptr, lw_ptr, s0_ptr, dy_ptr, dr_ptr, T,
            H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
            IS64: tl.constexpr, PREC: tl.constexpr):
    # dr_t[k] = sum_v dy_t[v] S_t[k, v]: the forward scan again, on rows kk of S.
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    pid, pk = tl.program_id(0), tl.program_id(1)
    b, h = pid // H, pid % H
    n, tt = tl.arange(0, N), tl.arange(0, BT)
    kk = pk * BK + tl.arange(0, BK)
    lw = tl.load(lw_ptr + h * N + kk).to(CDT)  # (BK,)
    S = tl.load(s0_ptr + pid.to(tl.int64) * N * N + kk[:, None] * N + n[None, :]).to(CDT)
    d = tt[:, None] - 1 - tt[None, :]
    dec = tl.exp(tl.where(d >= 0, d, 0).to(CDT)[:, :, None] * lw[None, None, :])
    w_t = tl.exp(tt.to(CDT)[:, None] * lw[None, :])  # (BT, BK)
    base = b.to(tl.int64) * T * H * N + h * N
    for c in range(0, T, BT):
        valid = (c + tt) < T
        L = tl.minimum(T - c, BT)
        row = base + (c + tt)[:, None].to(tl.int64) * (H * N)
        m = valid[:, None]
        kc = tl.load(k_ptr + row + kk[None, :], mask=m, other=0.0).to(CDT)
        vc = tl.load(v_ptr + row + n[None, :], mask=m, other=0.0).to(CDT)
        dyc = tl.load(dy_ptr + row + n[None, :], mask=m, other=0.0).to(CDT)
        Bm = tl.where(d >= 0, _dot(dyc, tl.trans(vc), IS64, PREC), 0.0)  # dy_t . v_s
        intra = tl.sum(Bm[:, :, None] * kc[None, :, :] * dec, axis=1)
        dr = _dot(dyc, tl.trans(S), IS64, PREC) * w_t + intra
        tl.store(dr_ptr + row + kk[None, :], dr, mask=m)
        e_end = tl.where(valid, L - 1 - tt, 0).to(CDT)
        k_end = kc * tl.exp(e_end[:, None] * lw[None, :])
        S = S * tl.exp(L.to(CDT) * lw)[:, None] + _dot(tl.trans(k_end), vc, IS64, PREC)


@triton.jit
def _bwd_dk(r_ptr, v_ptr, lw_ptr, dy_ptr, dsT_ptr, dk_ptr, ds0_ptr, T,
            H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
            IS64: tl.constexpr, PREC: tl.constexpr):
    # Reverse scan of G = dL/dS from dsT, rows kk: G_t = w * G_(t+1) + r_t^T dy_t.
    # dk_t = w^(L-1-t) (v_t G_end^T) + sum_(t'>t) r_t' w^(t'-1-t) (dy_t' . v_t)
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    pid, pk = tl.program_id(0), tl.program_id(1)
    b, h = pid // H, pid % H
    n, tt = tl.arange(0, N), tl.arange(0, BT)
    kk = pk * BK + tl.arange(0, BK)
    lw = tl.load(lw_ptr + h * N + kk).to(CDT)
    g_off = pid.to(tl.int64) * N * N + kk[:, None] * N + n[None, :]
    G = tl.load(dsT_ptr + g_off).to(CDT)  # (BK, N)
    d = tt[None, :] - 1 - tt[:, None]  # rows t, cols t' > t
    dec = tl.exp(tl.where(d >= 0, d, 0).to(CDT)[:, :, None] * lw[None, None, :])
    w_t = tl.exp(tt.to(CDT)[:, None] * lw[None, :])
    base = b.to(tl.int64) * T * H * N + h * N
    n_chunks = tl.cdiv(T, BT)
    for i in range(0, n_chunks):
        c = (n_chunks - 1 - i) * BT
        valid = (c + tt) < T
        L = tl.minimum(T - c, BT)
        row = base + (c + tt)[:, None].to(tl.int64) * (H * N)
        m = valid[:, None]
        rc = tl.load(r_ptr + row + kk[None, :], mask=m, other=0.0).to(CDT)
        vc = tl.load(v_ptr + row + n[None, :], mask=m, other=0.0).to(CDT)
        dyc = tl.load(dy_ptr + row + n[None, :], mask=m, other=0.0).to(CDT)
        e_end = tl.where(valid, L - 1 - tt, 0).to(CDT)
        w_end = tl.exp(e_end[:, None] * lw[None, :])
        Bt = tl.where(d >= 0, _dot(vc, tl.trans(dyc), IS64, PREC), 0.0)  # v_t . dy_t'
        dk = _dot(vc, tl.trans(G), IS64, PREC) * w_end
        dk += tl.sum(Bt[:, :, None] * rc[None, :, :] * dec, axis=1)
        tl.store(dk_ptr + row + kk[None, :], dk, mask=m)
        G = G * tl.exp(L.to(CDT) * lw)[:, None] + _dot(tl.trans(rc * w_t), dyc, IS64, PREC)
    tl.store(ds0_ptr + g_off, G)


@triton.jit
def _bwd_dv(r_ptr, k_ptr, lw_ptr, dy_ptr, dsT_ptr, dv_ptr, T,
            H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
            BK: tl.constexpr, IS64: tl.constexpr, PREC: tl.constexpr):
    # Reverse scan of G on columns vv: dv_t = (k_t w^(L-1-t)) G_end + sum_(t'>t) A[t', t] dy_t'.
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    pid, pv = tl.program_id(0), tl.program_id(1)
    b, h = pid // H, pid % H
    n, tt = tl.arange(0, N), tl.arange(0, BT)
    vv = pv * BV + tl.arange(0, BV)
    lw = tl.load(lw_ptr + h * N + n).to(CDT)
    G = tl.load(dsT_ptr + pid.to(tl.int64) * N * N + n[:, None] * N + vv[None, :]).to(CDT)
    w_t = tl.exp(tt.to(CDT)[:, None] * lw[None, :])
    base = b.to(tl.int64) * T * H * N + h * N
    n_chunks = tl.cdiv(T, BT)
    for i in range(0, n_chunks):
        c = (n_chunks - 1 - i) * BT
        valid = (c + tt) < T
        L = tl.minimum(T - c, BT)
        row = base + (c + tt)[:, None].to(tl.int64) * (H * N)
        m = valid[:, None]
        rc = tl.load(r_ptr + row + n[None, :], mask=m, other=0.0).to(CDT)
        kc = tl.load(k_ptr + row + n[None, :], mask=m, other=0.0).to(CDT)
        dyc = tl.load(dy_ptr + row + vv[None, :], mask=m, other=0.0).to(CDT)
        e_end = tl.where(valid, L - 1 - tt, 0).to(CDT)
        w_end = tl.exp(e_end[:, None] * lw[None, :])
        A = _attn(r_ptr, k_ptr, lw_ptr, row, m, h, N, BT, BK, CDT)  # rows t', cols t
        dv = _dot(kc * w_end, G, IS64, PREC) + _dot(tl.trans(A), dyc, IS64, PREC)
        tl.store(dv_ptr + row + vv[None, :], dv, mask=m)
        G = G * tl.exp(L.to(CDT) * lw)[:, None] + _dot(tl.trans(rc * w_t), dyc, IS64, PREC)
