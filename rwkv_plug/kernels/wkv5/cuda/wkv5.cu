// wkv5 state part, forward and backward, in plain CUDA (no torch headers).
//
// Compiled per configuration: -DWKV_N=<head size> -DWKV_IN=<float|double|__nv_bfloat16|__half>.
// Plain CUDA with extern "C" launchers, so `nvcc -c` works without torch or a GPU.
// One block per (batch row b, head h), WKV_N threads. States are (B, H, N, N)
// indexed [k][v], row-major, with the batch offset applied (the earlier
// trainer's kernel forgot it). r, k, v, dy are (B, T, H, N). Accumulation is
// in acc_t: double for double inputs, else float.
//
//   y_t[v]   = sum_k r_t[k] S_t[k][v]          S_(t+1) = w * S_t + k_t^T v_t
//   G_t      = w * G_(t+1) + r_t^T dy_t       (G_T = dsT, ds0 = G_0)
//   dr_t[k]  = sum_v dy_t[v] S_t[k][v]
//   dk_t[k]  = sum_v G_(t+1)[k][v] v_t[v]     dv_t[v] = sum_k k_t[k] G_(t+1)[k][v]
//
// The bonus term u and the decay gradient are computed by the caller.
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

__device__ __forceinline__ acc_t to_acc(float x) { return static_cast<acc_t>(x); }
__device__ __forceinline__ acc_t to_acc(double x) { return static_cast<acc_t>(x); }
__device__ __forceinline__ acc_t to_acc(__nv_bfloat16 x) {
  return static_cast<acc_t>(__bfloat162float(x));
}
__device__ __forceinline__ acc_t to_acc(__half x) { return static_cast<acc_t>(__half2float(x)); }


namespace {

// Offset of token t of (b, h) in a (B, T, H, N) tensor; 64-bit for long sequences.
__device__ __forceinline__ int64_t tok(int b, int t, int h, int T, int H) {
  return ((static_cast<int64_t>(b) * T + t) * H + h) * WKV_N;
}

// Thread i owns column v = i of S.
__global__ void fwd_kernel(int T, int H, const in_t* __restrict__ r, const in_t* __restrict__ k,
                           const in_t* __restrict__ v, const acc_t* __restrict__ lw,
                           const acc_t* __restrict__ s0, acc_t* __restrict__ y,
                           acc_t* __restrict__ sT) {
  const int b = blockIdx.x / H, h = blockIdx.x % H, i = threadIdx.x;
  __shared__ acc_t rs[WKV_N], ks[WKV_N], ws[WKV_N];
  const int64_t so = static_cast<int64_t>(blockIdx.x) * WKV_N * WKV_N;
  acc_t S[WKV_N];
  #pragma unroll
  for (int j = 0; j < WKV_N; j++) S[j] = s0[so + j * WKV_N + i];
  ws[i] = exp(lw[h * WKV_N + i]);
  for (int t = 0; t < T; t++) {
    const int64_t o = tok(b, t, h, T, H);
    __syncthreads();
    rs[i] = to_acc(r[o + i]);
    ks[i] = to_acc(k[o + i]);
    __syncthreads();
    const acc_t vi = to_acc(v[o + i]);
    acc_t yi = 0;
#pragma unroll
    for (int j = 0; j < WKV_N; j++) {
      yi += rs[j] * S[j];
      S[j] = ws[j] * S[j] + ks[j] * vi;
    }
    y[o + i] = yi;
  }
  #pragma unroll
  for (int j = 0; j < WKV_N; j++) sT[so + j * WKV_N + i] = S[j];
}

// Thread i owns row k = i of S; forward scan for dr.
__global__ void bwd_dr_kernel(int T, int H, const in_t* __restrict__ k, const in_t* __restrict__ v,
                              const acc_t* __restrict__ lw, const acc_t* __restrict__ s0,
                              const acc_t* __restrict__ dy, acc_t* __restrict__ dr) {
  const int b = blockIdx.x / H, h = blockIdx.x % H, i = threadIdx.x;
  __shared__ acc_t vs[WKV_N], gs[WKV_N];
  const int64_t so = static_cast<int64_t>(blockIdx.x) * WKV_N * WKV_N;
  acc_t S[WKV_N];
  #pragma unroll
  for (int j = 0; j < WKV_N; j++) S[j] = s0[so + i * WKV_N + j];
  const acc_t wi = exp(lw[h * WKV_N + i]);
  for (int t = 0; t < T; t++) {
    const int64_t o = tok(b, t, h, T, H);
    __syncthreads();
    vs[i] = to_acc(v[o + i]);
    gs[i] = dy[o + i];
    __syncthreads();
    const acc_t ki = to_acc(k[o + i]);
    acc_t acc = 0;
#pragma unroll
    for (int j = 0; j < WKV_N; j++) {
      acc += gs[j] * S[j];
      S[j] = wi * S[j] + ki * vs[j];
    }
    dr[o + i] = acc;
  }
}

// Thread i owns row k = i of G; reverse scan for dk and ds0.
__global__ void bwd_dk_kernel(int T, int H, const in_t* __restrict__ r, const in_t* __restrict__ v,
                              const acc_t* __restrict__ lw, const acc_t* __restrict__ dy,
                              const acc_t* __restrict__ dsT, acc_t* __restrict__ dk,
                              acc_t* __restrict__ ds0) {
  const int b = blockIdx.x / H, h = blockIdx.x % H, i = threadIdx.x;
  __shared__ acc_t vs[WKV_N], gs[WKV_N];
  const int64_t so = static_cast<int64_t>(blockIdx.x) * WKV_N * WKV_N;
  acc_t G[WKV_N];
  #pragma unroll
  for (int j = 0; j < WKV_N; j++) G[j] = dsT[so + i * WKV_N + j];
  const acc_t wi = exp(lw[h * WKV_N + i]);
  for (int t = T - 1; t >= 0; t--) {
    const int64_t o = tok(b, t, h, T, H);
    __syncthreads();
    vs[i] = to_acc(v[o + i]);
    gs[i] = dy[o + i];
    __syncthreads();
    const acc_t ri = to_acc(r[o + i]);
    acc_t acc = 0;
#pragma unroll
    for (int j = 0; j < WKV_N; j++) {
      acc += G[j] * vs[j];
      G[j] = wi * G[j] + ri * gs[j];
    }
    dk[o + i] = acc;
  }
  #pragma unroll
  for (int j = 0; j < WKV_N; j++) ds0[so + i * WKV_N + j] = G[j];
}

// Thread i owns column v = i of G; reverse scan for dv.
__global__ void bwd_dv_kernel(int T, int H, const in_t* __restrict__ r, const in_t* __restrict__ k,
                              const acc_t* __restrict__ lw, const acc_t* __restrict__ dy,
                              const acc_t* __restrict__ dsT, acc_t* __restrict__ dv) {
  const int b = blockIdx.x / H, h = blockIdx.x % H, i = threadIdx.x;
  __shared__ acc_t rs[WKV_N], ks[WKV_N], ws[WKV_N];
  const int64_t so = static_cast<int64_t>(blockIdx.x) * WKV_N * WKV_N;
  acc_t G[WKV_N];
  #pragma unroll
  for (int j = 0; j < WKV_N; j++) G[j] = dsT[so + j * WKV_N + i];
  ws[i] = exp(lw[h * WKV_N + i]);
  for (int t = T - 1; t >= 0; t--) {
    const int64_t o = tok(b, t, h, T, H);
    __syncthreads();
    rs[i] = to_acc(r[o + i]);
    ks[i] = to_acc(k[o + i]);
    __syncthreads();
    const acc_t gi = dy[o + i];
    acc_t acc = 0;
#pragma unroll
    for (int j = 0; j < WKV_N; j++) {
      acc += ks[j] * G[j];
      G[j] = ws[j] * G[j] + rs[j] * gi;
    }
    dv[o + i] = acc;
  }
}

}  // namespace

// C entry points for the binding; pointers are device pointers, stream is a cudaStream_t.
extern "C" int wkv5_forward(int B, int T, int H, const void* r, const void* k, const void* v,
                            const void* lw, const void* s0, void* y, void* sT, void* stream) {
  fwd_kernel<<<B * H, WKV_N, 0, static_cast<cudaStream_t>(stream)>>>(
      T, H, static_cast<const in_t*>(r), static_cast<const in_t*>(k),
      static_cast<const in_t*>(v), static_cast<const acc_t*>(lw), static_cast<const acc_t*>(s0),
      static_cast<acc_t*>(y), static_cast<acc_t*>(sT));
  return static_cast<int>(cudaGetLastError());
}

extern "C" int wkv5_backward(int B, int T, int H, const void* r, const void* k, const void* v,
                             const void* lw, const void* s0, const void* dy, const void* dsT,
                             void* dr, void* dk, void* dv, void* ds0, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const in_t *r_ = static_cast<const in_t*>(r), *k_ = static_cast<const in_t*>(k),
             *v_ = static_cast<const in_t*>(v);
  const acc_t *lw_ = static_cast<const acc_t*>(lw), *dy_ = static_cast<const acc_t*>(dy),
              *dsT_ = static_cast<const acc_t*>(dsT);
  bwd_dr_kernel<<<B * H, WKV_N, 0, st>>>(T, H, k_, v_, lw_, static_cast<const acc_t*>(s0), dy_,
                                         static_cast<acc_t*>(dr));
  bwd_dk_kernel<<<B * H, WKV_N, 0, st>>>(T, H, r_, v_, lw_, dy_, dsT_, static_cast<acc_t*>(dk),
                                         static_cast<acc_t*>(ds0));
  bwd_dv_kernel<<<B * H, WKV_N, 0, st>>>(T, H, r_, k_, lw_, dy_, dsT_, static_cast<acc_t*>(dv));
  return static_cast<int>(cudaGetLastError());
}
