"""Triton kernels for wkv7 (imported only when the triton kernel is first used).

See :mod:`rwkv_plug.kernels.wkv7.triton` for the design. One program owns
rows ``vv`` (``BV`` values) of one (batch row, head)'s ``N x N`` state: the
rows of ``S_t = S_(t-1) (diag(w_t) + a_t b_t^T) + v_t k_t^T`` evolve
independently, so the row blocks need no communication. Gradients that sum
over rows (``dr, dw, dk, da, db``) are written per row block and summed by
the caller.
"""

import triton
import triton.language as tl


@triton.jit
def _fwd(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, s0_ptr, y_ptr, sT_ptr, snap_ptr, T,
         H: tl.constexpr, N: tl.constexpr, BV: tl.constexpr, CH: tl.constexpr,
         IS64: tl.constexpr):
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    pid, pv = tl.program_id(0), tl.program_id(1)
    b = pid // H
    h = pid % H
    n = tl.arange(0, N)
    vv = pv * BV + tl.arange(0, BV)
    s_off = pid.to(tl.int64) * N * N + vv[:, None] * N + n[None, :]  # S[vv, :]
    S = tl.load(s0_ptr + s_off).to(CDT)  # (BV, N)
    base = b.to(tl.int64) * T * H * N + h * N
    n_snap = tl.cdiv(T, CH)
    for c in range(0, T, CH):
        # the state before token c, for the backward's recomputation
        tl.store(snap_ptr + (pid.to(tl.int64) * n_snap + c // CH) * N * N
                 + vv[:, None] * N + n[None, :], S)
        for t in range(c, tl.minimum(c + CH, T)):
            row = base + tl.cast(t, tl.int64) * H * N
            wt = tl.load(w_ptr + row + n).to(CDT)
            kt = tl.load(k_ptr + row + n).to(CDT)
            at = tl.load(a_ptr + row + n).to(CDT)
            bt = tl.load(b_ptr + row + n).to(CDT)
            rt = tl.load(r_ptr + row + n).to(CDT)
            vt = tl.load(v_ptr + row + vv).to(CDT)
            sa = tl.sum(S * at[None, :], axis=1)  # (BV,) = S a
            S = S * wt[None, :] + sa[:, None] * bt[None, :] + vt[:, None] * kt[None, :]
            tl.store(y_ptr + row + vv, tl.sum(S * rt[None, :], axis=1))
    tl.store(sT_ptr + s_off, S)


@triton.jit
def _bwd(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, snap_ptr, dy_ptr, dsT_ptr, work_ptr,
         dr_ptr, dw_ptr, dk_ptr, dv_ptr, da_ptr, db_ptr, ds0_ptr, T, part_stride,
         H: tl.constexpr, N: tl.constexpr, BV: tl.constexpr, CH: tl.constexpr,
         IS64: tl.constexpr):
    # Reverse scan of G = dL/dS (rows vv) from dsT. Per segment of CH tokens the
    # states are recomputed from the segment's snapshot into a per-program work
    # buffer, then read back in reverse. At token t, with sa = S_(t-1) a_t:
    #   G += dy_t r_t^T;  dr_t = S_t^T dy_t;  dv_t = G k_t;  dk_t = G^T v_t
    #   dw_t = sum_rows G * S_(t-1);  db_t = G^T sa;  q = G b_t;  da_t = S_(t-1)^T q
    #   G <- G diag(w_t) + q a_t^T
    CDT: tl.constexpr = tl.float64 if IS64 else tl.float32
    pid, pv = tl.program_id(0), tl.program_id(1)
    NVB = tl.num_programs(1)
    b = pid // H
    h = pid % H
    n = tl.arange(0, N)
    vv = pv * BV + tl.arange(0, BV)
    tile = vv[:, None] * N + n[None, :]
    s_off = pid.to(tl.int64) * N * N + tile
    G = tl.load(dsT_ptr + s_off).to(CDT)
    base = b.to(tl.int64) * T * H * N + h * N
    part = pv.to(tl.int64) * part_stride  # this row block's slice of the partial sums
    wtile = tl.arange(0, BV)[:, None] * N + n[None, :]
    work = (pid.to(tl.int64) * NVB + pv) * CH * BV * N  # CH states of rows vv
    n_snap = tl.cdiv(T, CH)
    for i in range(0, n_snap):
        seg = n_snap - 1 - i
        c = seg * CH
        end = tl.minimum(c + CH, T)
        S = tl.load(snap_ptr + (pid.to(tl.int64) * n_snap + seg) * N * N + tile).to(CDT)
        for t in range(c, end):  # recompute S_(t-1) for t in the segment
            tl.store(work_ptr + work + (t - c) * BV * N + wtile, S)
            row = base + tl.cast(t, tl.int64) * H * N
            wt = tl.load(w_ptr + row + n).to(CDT)
            kt = tl.load(k_ptr + row + n).to(CDT)
            at = tl.load(a_ptr + row + n).to(CDT)
            bt = tl.load(b_ptr + row + n).to(CDT)
            vt = tl.load(v_ptr + row + vv).to(CDT)
            sa = tl.sum(S * at[None, :], axis=1)
            S = S * wt[None, :] + sa[:, None] * bt[None, :] + vt[:, None] * kt[None, :]
        tl.debug_barrier()  # the work buffer is written and read by different threads
        for j in range(0, end - c):
            t = end - 1 - j
            row = base + tl.cast(t, tl.int64) * H * N
            Sp = tl.load(work_ptr + work + (t - c) * BV * N + wtile).to(CDT)  # S_(t-1)
            wt = tl.load(w_ptr + row + n).to(CDT)
            kt = tl.load(k_ptr + row + n).to(CDT)
            at = tl.load(a_ptr + row + n).to(CDT)
            bt = tl.load(b_ptr + row + n).to(CDT)
            rt = tl.load(r_ptr + row + n).to(CDT)
            vt = tl.load(v_ptr + row + vv).to(CDT)
            dyt = tl.load(dy_ptr + row + vv).to(CDT)
            sa = tl.sum(Sp * at[None, :], axis=1)
            St = Sp * wt[None, :] + sa[:, None] * bt[None, :] + vt[:, None] * kt[None, :]
            G += dyt[:, None] * rt[None, :]
            q = tl.sum(G * bt[None, :], axis=1)  # (BV,)
            tl.store(dr_ptr + part + row + n, tl.sum(St * dyt[:, None], axis=0))
            tl.store(dw_ptr + part + row + n, tl.sum(G * Sp, axis=0))
            tl.store(dk_ptr + part + row + n, tl.sum(G * vt[:, None], axis=0))
            tl.store(db_ptr + part + row + n, tl.sum(G * sa[:, None], axis=0))
            tl.store(da_ptr + part + row + n, tl.sum(Sp * q[:, None], axis=0))
            tl.store(dv_ptr + row + vv, tl.sum(G * kt[None, :], axis=1))
            G = G * wt[None, :] + q[:, None] * at[None, :]
        tl.debug_barrier()  # the next segment reuses the work buffer
    tl.store(ds0_ptr + s_off, G)
