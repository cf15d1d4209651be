"""Triton kernels for wkv5 (imported only when the triton kernel is first used).

See :mod:`rwkv_plug.kernels.triton_wkv5` for the formulation. All three
kernels run one program per (batch row, head) over chunks of ``BT`` tokens.
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
def _decay3(lw, BT: tl.constexpr, TRANSPOSED: tl.constexpr, CDT: tl.constexpr):
    # (BT, BT, N) of w^(t-1-s) where s < t (rows t), else 1; TRANSPOSED swaps t and s.
    tt = tl.arange(0, BT)
    if TRANSPOSED:
        d = tt[None, :] - 1 - tt[:, None]
    else:
        d = tt[:, None] - 1 - tt[None, :]
    dpos = tl.where(d >= 0, d, 0).to(CDT)
    return tl.exp(dpos[:, :, None] * lw[None, None, :])

@triton.jit
def _fwd(r_ptr, k_ptr, v_ptr, lw_ptr, s0_ptr, y_ptr, sT_ptr, T,
         H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
         IS64: tl.constexpr, PREC: tl.constexpr):
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    pid = tl.program_id(0)
    b, h = pid // H, pid % H
    n, tt = tl.arange(0, N), tl.arange(0, BT)
    lw = tl.load(lw_ptr + h * N + n).to(CDT)
    s_off = pid.to(tl.int64) * N * N + n[:, None] * N + n[None, :]
    S = tl.load(s0_ptr + s_off).to(CDT)  # (N, N) indexed [k, v]
    causal = (tt[:, None] - 1 - tt[None, :]) >= 0
    dec3 = _decay3(lw, BT, False, CDT)
    tf = tt.to(CDT)
    w_t = tl.exp(tf[:, None] * lw[None, :])  # (BT, N) w^t
    base = b.to(tl.int64) * T * H * N + h * N
    for c in range(0, T, BT):
        valid = (c + tt) < T
        L = tl.minimum(T - c, BT)
        off = base + (c + tt)[:, None].to(tl.int64) * (H * N) + n[None, :]
        m = valid[:, None]
        rc = tl.load(r_ptr + off, mask=m, other=0.0).to(CDT)
        kc = tl.load(k_ptr + off, mask=m, other=0.0).to(CDT)
        vc = tl.load(v_ptr + off, mask=m, other=0.0).to(CDT)
        A = tl.sum(rc[:, None, :] * kc[None, :, :] * dec3, axis=2)
        A = tl.where(causal, A, 0.0).to(CDT)
        y = _dot(rc * w_t, S, IS64, PREC) + _dot(A, vc, IS64, PREC)
        tl.store(y_ptr + off, y, mask=m)
        e_end = tl.where(valid, L - 1 - tt, 0).to(CDT)
        k_end = kc * tl.exp(e_end[:, None] * lw[None, :])
        w_L = tl.exp(L.to(CDT) * lw)
        S = S * w_L[:, None] + _dot(tl.trans(k_end), vc, IS64, PREC)
    tl.store(sT_ptr + s_off, S)

@triton.jit
def _bwd_dr(r_ptr, k_ptr, v_ptr, lw_ptr, s0_ptr, dy_ptr, dr_ptr, T,
            H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
            IS64: tl.constexpr, PREC: tl.constexpr):
    # dr_t[k] = sum_v dy_t[v] S_t[k, v]: the forward scan again, read along k.
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    pid = tl.program_id(0)
    b, h = pid // H, pid % H
    n, tt = tl.arange(0, N), tl.arange(0, BT)
    lw = tl.load(lw_ptr + h * N + n).to(CDT)
    s_off = pid.to(tl.int64) * N * N + n[:, None] * N + n[None, :]
    S = tl.load(s0_ptr + s_off).to(CDT)
    causal = (tt[:, None] - 1 - tt[None, :]) >= 0
    dec3 = _decay3(lw, BT, False, CDT)
    tf = tt.to(CDT)
    w_t = tl.exp(tf[:, None] * lw[None, :])
    base = b.to(tl.int64) * T * H * N + h * N
    for c in range(0, T, BT):
        valid = (c + tt) < T
        L = tl.minimum(T - c, BT)
        off = base + (c + tt)[:, None].to(tl.int64) * (H * N) + n[None, :]
        m = valid[:, None]
        kc = tl.load(k_ptr + off, mask=m, other=0.0).to(CDT)
        vc = tl.load(v_ptr + off, mask=m, other=0.0).to(CDT)
        dyc = tl.load(dy_ptr + off, mask=m, other=0.0).to(CDT)
        Bm = tl.where(causal, _dot(dyc, tl.trans(vc), IS64, PREC), 0.0)  # dy_t . v_s
        intra = tl.sum(Bm[:, :, None] * kc[None, :, :] * dec3, axis=1)
        dr = _dot(dyc, tl.trans(S), IS64, PREC) * w_t + intra
        tl.store(dr_ptr + off, dr, mask=m)
        e_end = tl.where(valid, L - 1 - tt, 0).to(CDT)
        k_end = kc * tl.exp(e_end[:, None] * lw[None, :])
        w_L = tl.exp(L.to(CDT) * lw)
        S = S * w_L[:, None] + _dot(tl.trans(k_end), vc, IS64, PREC)

@triton.jit
def _bwd_rev(r_ptr, k_ptr, v_ptr, lw_ptr, dy_ptr, dsT_ptr, dk_ptr, dv_ptr, ds0_ptr, T,
             H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
             IS64: tl.constexpr, PREC: tl.constexpr):
    # Reverse scan of G = dL/dS (starts at dsT): G_t = w * G_(t+1) + r_t^T dy_t.
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    pid = tl.program_id(0)
    b, h = pid // H, pid % H
    n, tt = tl.arange(0, N), tl.arange(0, BT)
    lw = tl.load(lw_ptr + h * N + n).to(CDT)
    s_off = pid.to(tl.int64) * N * N + n[:, None] * N + n[None, :]
    G = tl.load(dsT_ptr + s_off).to(CDT)
    causal = (tt[:, None] - 1 - tt[None, :]) >= 0  # rows t', cols t < t'
    later = (tt[None, :] - 1 - tt[:, None]) >= 0  # rows t, cols t' > t
    dec3 = _decay3(lw, BT, False, CDT)
    dec3t = _decay3(lw, BT, True, CDT)
    tf = tt.to(CDT)
    w_t = tl.exp(tf[:, None] * lw[None, :])
    base = b.to(tl.int64) * T * H * N + h * N
    n_chunks = tl.cdiv(T, BT)
    for i in range(0, n_chunks):
        c = (n_chunks - 1 - i) * BT
        valid = (c + tt) < T
        L = tl.minimum(T - c, BT)
        off = base + (c + tt)[:, None].to(tl.int64) * (H * N) + n[None, :]
        m = valid[:, None]
        rc = tl.load(r_ptr + off, mask=m, other=0.0).to(CDT)
        kc = tl.load(k_ptr + off, mask=m, other=0.0).to(CDT)
        vc = tl.load(v_ptr + off, mask=m, other=0.0).to(CDT)
        dyc = tl.load(dy_ptr + off, mask=m, other=0.0).to(CDT)
        e_end = tl.where(valid, L - 1 - tt, 0).to(CDT)
        w_end = tl.exp(e_end[:, None] * lw[None, :])  # w^(L-1-t)
        # dk_t = w^(L-1-t) (G_end v_t) + sum_(t'>t) r_t' w^(t'-1-t) (dy_t' . v_t)
        Bt = tl.where(later, _dot(vc, tl.trans(dyc), IS64, PREC), 0.0)
        dk = _dot(vc, tl.trans(G), IS64, PREC) * w_end
        dk += tl.sum(Bt[:, :, None] * rc[None, :, :] * dec3t, axis=1)
        # dv_t = (k_t w^(L-1-t)) G_end + sum_(t'>t) A[t', t] dy_t'
        A = tl.where(causal, tl.sum(rc[:, None, :] * kc[None, :, :] * dec3, axis=2), 0.0)
        dv = _dot(kc * w_end, G, IS64, PREC) + _dot(tl.trans(A.to(CDT)), dyc, IS64, PREC)
        tl.store(dk_ptr + off, dk, mask=m)
        tl.store(dv_ptr + off, dv, mask=m)
        w_L = tl.exp(L.to(CDT) * lw)
        G = G * w_L[:, None] + _dot(tl.trans(rc * w_t), dyc, IS64, PREC)
    tl.store(ds0_ptr + s_off, G)

