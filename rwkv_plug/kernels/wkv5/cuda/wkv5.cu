// wkv5 state part, forward and backward, in plain CUDA (no torch headers).
//
// Compiled per configuration: -DWKV_N=<head size> -DWKV_IN=<float|double|__nv_bfloat16|__half>.
// Plain CUDA with extern "C" launchers, so `nvcc -c` works without torch or a GPU.
// Tensors: r, k, v, dy are (B, T, H, N); lw = log(w) is (H, N); states are (B, H, N, N)
// indexed [k][v], row-major. Arithmetic is in acc_t: double for double inputs, else float,
// one fused multiply-add at a time (no tensor cores), so model.wkv_precision does not apply.
//
// The math, per (batch row b, head h), S_t the state before token t:
//
//   forward   y_t[v]   = sum_k r_t[k] S_t[k][v]                S_(t+1) = w * S_t + k_t (x) v_t
//   backward  G_t = dL/dS_t:  G_T = dsT,   G_t = w * G_(t+1) + r_t (x) dy_t,   ds0 = G_0
//             dr_t[k]  = sum_v dy_t[v] S_t[k][v]               (S scanned forward again)
//             dk_t[k]  = sum_v v_t[v] G_(t+1)[k][v]            (G scanned in reverse)
//             dv_t[v]  = sum_k k_t[k] G_(t+1)[k][v]            (G scanned in reverse)
//
// (w * X scales row k by w[k]; a (x) b is the outer product a[k] b[v].) All four passes are
// one pattern: a thread holds one line (a row or a column) of an N x N matrix M, and at every
// step reads out  sum_j probe[j] * M_line[j]  before updating  M_line[j] = decay * M_line[j]
// + inject[j] * own,  where probe and inject are vectors of the step shared by the block and
// own is the thread's entry of a third vector. So there is one kernel, line_scan, and the four
// passes differ only in what they feed it:
//
//   pass      M   line        direction  probe  inject  own   decay      start  finish
//   forward   S   column v=i  forward    r      k       v     w[j]       s0     sT
//   dr        S   row    k=i  forward    dy     v       k     w[i]       s0     -
//   dk        G   row    k=i  reverse    v      dy      r     w[i]       dsT    ds0
//   dv        G   column v=i  reverse    k      r       dy    w[j]       dsT    -
//
// The bonus term u and the decay gradient are computed by the caller (fused.py).
//
// Idea credit: one block per (batch row, head) with one thread per state line kept in
// registers, stepping through time with the step's vectors broadcast in shared memory, is
// the per-step layout of the wkv5 CUDA kernel in BlinkDL's RWKV-LM. The single line-scan
// kernel, the pass table, the double-buffered broadcast and the batch offsets are ours.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <type_traits>

#ifndef WKV_N
#define WKV_N 64
#endif
#ifndef WKV_IN
#define WKV_IN float
#endif

typedef WKV_IN in_t;
typedef std::conditional<std::is_same<in_t, double>::value, double, float>::type acc_t;

// Any input or gradient element to acc_t (outside the anonymous namespace: each build uses
// only the overloads of its own input type, and unused internal functions would warn).
__device__ __forceinline__ acc_t widen(float x) { return static_cast<acc_t>(x); }
__device__ __forceinline__ acc_t widen(double x) { return static_cast<acc_t>(x); }
__device__ __forceinline__ acc_t widen(__nv_bfloat16 x) { return static_cast<acc_t>(__bfloat162float(x)); }
__device__ __forceinline__ acc_t widen(__half x) { return static_cast<acc_t>(__half2float(x)); }

namespace {

enum class Line { kRow, kColumn };       // which line of M a thread holds
enum class Dir { kForward, kReverse };   // the order tokens are visited in

// Element j of thread i's line in a row-major N x N matrix.
template <Line L>
__device__ __forceinline__ int cell(int i, int j) {
  return L == Line::kRow ? i * WKV_N + j : j * WKV_N + i;
}

// The t-th token visited: t itself forward, T-1-t in reverse.
template <Dir D>
__device__ __forceinline__ int visit(int t, int T) {
  return D == Dir::kForward ? t : T - 1 - t;
}

// One pass of the table above for block (b, h) = (blockIdx.x / H, blockIdx.x % H), thread i.
// out[token] = sum_j probe[j] * M_line[j] (before the update); finish (if not null) gets the
// line after the last token.
template <Line L, Dir D, typename ProbeT, typename InjectT, typename OwnT>
__global__ void __launch_bounds__(WKV_N)
line_scan(int T, int H, const ProbeT* __restrict__ probe, const InjectT* __restrict__ inject,
          const OwnT* __restrict__ own, const acc_t* __restrict__ lw,
          const acc_t* __restrict__ start, acc_t* __restrict__ out, acc_t* __restrict__ finish) {
  const int h = blockIdx.x % H, i = threadIdx.x;
  const int64_t mat = static_cast<int64_t>(blockIdx.x) * WKV_N * WKV_N;  // (b, h) = blockIdx.x
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x / H) * T * H + h) * WKV_N;  // (b, 0, h, 0)
  const int64_t stride = static_cast<int64_t>(H) * WKV_N;  // one token further

  __shared__ acc_t decay[WKV_N];
  // Double-buffered step vectors: step s writes buffer s & 1, so one barrier per step
  // suffices (a thread can only reach the write of step s + 2 after every thread has
  // passed the barrier of step s + 1, i.e. finished reading step s).
  __shared__ acc_t probe_sh[2][WKV_N], inject_sh[2][WKV_N];

  acc_t m[WKV_N];  // the thread's line of M, in registers
#pragma unroll
  for (int j = 0; j < WKV_N; j++) m[j] = start[mat + cell<L>(i, j)];
  decay[i] = exp(lw[h * WKV_N + i]);
  __syncthreads();
  const acc_t own_decay = decay[i];

  for (int s = 0; s < T; s++) {
    const int64_t o = row0 + visit<D>(s, T) * stride;
    const int buf = s & 1;
    probe_sh[buf][i] = widen(probe[o + i]);
    inject_sh[buf][i] = widen(inject[o + i]);
    const acc_t mine = widen(own[o + i]);
    __syncthreads();
    acc_t read = 0;
#pragma unroll
    for (int j = 0; j < WKV_N; j++) {
      read += probe_sh[buf][j] * m[j];
      const acc_t d = L == Line::kRow ? own_decay : decay[j];
      m[j] = d * m[j] + inject_sh[buf][j] * mine;
    }
    out[o + i] = read;
  }
  if (finish != nullptr) {
#pragma unroll
    for (int j = 0; j < WKV_N; j++) finish[mat + cell<L>(i, j)] = m[j];
  }
}

}  // namespace

// C entry points for the binding; pointers are device pointers, stream is a cudaStream_t.
// r, k, v are in_t; lw, s0, dy, dsT and every output are acc_t.
extern "C" int wkv5_forward(int B, int T, int H, const void* r, const void* k, const void* v,
                            const void* lw, const void* s0, void* y, void* sT, void* stream) {
  const in_t *r_ = static_cast<const in_t*>(r), *k_ = static_cast<const in_t*>(k),
             *v_ = static_cast<const in_t*>(v);
  line_scan<Line::kColumn, Dir::kForward>
      <<<B * H, WKV_N, 0, static_cast<cudaStream_t>(stream)>>>(
          T, H, r_, k_, v_, static_cast<const acc_t*>(lw), static_cast<const acc_t*>(s0),
          static_cast<acc_t*>(y), static_cast<acc_t*>(sT));
  return static_cast<int>(cudaGetLastError());
}

extern "C" int wkv5_backward(int B, int T, int H, const void* r, const void* k, const void* v,
                             const void* lw, const void* s0, const void* dy, const void* dsT,
                             void* dr, void* dk, void* dv, void* ds0, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const in_t *r_ = static_cast<const in_t*>(r), *k_ = static_cast<const in_t*>(k),
             *v_ = static_cast<const in_t*>(v);
  const acc_t *lw_ = static_cast<const acc_t*>(lw), *dy_ = static_cast<const acc_t*>(dy);
  const acc_t *s0_ = static_cast<const acc_t*>(s0), *dsT_ = static_cast<const acc_t*>(dsT);
  acc_t* none = nullptr;
  // dr: rows of S, forward from s0:        probe dy, inject v, own k.
  line_scan<Line::kRow, Dir::kForward><<<B * H, WKV_N, 0, st>>>(
      T, H, dy_, v_, k_, lw_, s0_, static_cast<acc_t*>(dr), none);
  // dk, ds0: rows of G, reverse from dsT:  probe v, inject dy, own r.
  line_scan<Line::kRow, Dir::kReverse><<<B * H, WKV_N, 0, st>>>(
      T, H, v_, dy_, r_, lw_, dsT_, static_cast<acc_t*>(dk), static_cast<acc_t*>(ds0));
  // dv: columns of G, reverse from dsT:    probe k, inject r, own dy.
  line_scan<Line::kColumn, Dir::kReverse><<<B * H, WKV_N, 0, st>>>(
      T, H, k_, r_, dy_, lw_, dsT_, static_cast<acc_t*>(dv), none);
  return static_cast<int>(cudaGetLastError());
}
