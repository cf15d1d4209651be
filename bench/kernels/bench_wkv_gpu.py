"""GPU benchmark: wkv5 forward+backward, microseconds per token per layer.

Shape of one RWKV-5 layer at D=4096: head size 64 (H=64), T=4096, bf16
r/k/v with an fp32 state, B=1 by default. Compares the triton and cuda
kernels with the torch chunked form measured in the same run, and with
flash-linear-attention's ``chunk_rwkv6`` (constant decay) if it imports.
Target: <= 0.3 us/token/layer (the official RWKV-5 CUDA kernel: ~0.52).

    python bench/kernels/bench_wkv_gpu.py [--T 4096] [--dim 4096] [--batch 1]

Each kernel's output is also checked against the torch chunked form on the
same inputs, so a fast wrong kernel shows up here too.
"""

from __future__ import annotations

import argparse

import torch


def _inputs(B: int, T: int, H: int, N: int, dtype: torch.dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = [(torch.randn(B, T, H, N, device="cuda", generator=g) * 0.5).to(dtype) for _ in range(3)]
    theta = torch.linspace(-6, 2, H * N, device="cuda").view(H, N)
    w = torch.exp(-torch.exp(theta))
    u = torch.randn(H, N, device="cuda", generator=g) * 0.5
    s0 = torch.randn(B, H, N, N, device="cuda", generator=g) * 0.1
    return [x.requires_grad_() for x in (*xs, w, u, s0)]


def _fwd_bwd(fn, ins, gy, gs):
    y, sT = fn(*ins)
    torch.autograd.backward([y, sT], [gy, gs])
    return y, sT


def _time_us(fn, ins, gy, gs, repeats: int) -> float:
    for _ in range(2):
        _fwd_bwd(fn, ins, gy, gs)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        _fwd_bwd(fn, ins, gy, gs)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / repeats


def _fla_kernel():
    """flash-linear-attention's chunk_rwkv6 with a constant decay, or None."""
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except Exception as exc:
        print(f"fla: not importable ({type(exc).__name__}: {exc})")
        return None

    def run(r, k, v, w, u, s0):
        B, T, H, N = r.shape
        lw = torch.log(w).view(1, 1, H, N).expand(B, T, H, N).to(r.dtype)
        o, sT = chunk_rwkv6(r, k, v, lw, u, scale=1.0, initial_state=s0,
                            output_final_state=True, head_first=False)
        return o, sT

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-torch", action="store_true", help="skip the (slow) torch baseline")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_wkv_gpu.py needs a CUDA device")
    from rwkv_plug.kernels.backend_cuda import CudaKernel
    from rwkv_plug.kernels.backend_torch import TorchKernel
    from rwkv_plug.kernels.backend_triton import TritonKernel

    N = 64
    B, T, H = a.batch, a.T, a.dim // N
    print(f"GPU: {torch.cuda.get_device_name()}  B={B} T={T} H={H} N={N} bf16 inputs, fp32 state")
    ins = _inputs(B, T, H, N, torch.bfloat16)
    gy = torch.randn(B, T, H, N, device="cuda", dtype=torch.bfloat16)
    gs = torch.randn(B, H, N, N, device="cuda")
    ref_y = TorchKernel().wkv5(*[x.detach() for x in ins])[0].float()
    kernels = {}
    if not a.skip_torch:
        kernels["torch"] = TorchKernel().wkv5
    for cls in (TritonKernel, CudaKernel):
        ok, reason = cls.availability()
        if ok:
            kernels[cls.name] = cls().wkv5
        else:
            print(f"{cls.name}: unavailable ({reason})")
    fla = _fla_kernel()
    if fla is not None:
        kernels["fla chunk_rwkv6"] = fla
    results = {}
    for name, fn in kernels.items():
        try:
            with torch.no_grad():
                y = fn(*[x.detach() for x in ins])[0].float()
            err = ((y - ref_y).abs().max() / ref_y.abs().max()).item()
            us = _time_us(fn, ins, gy, gs, a.repeats)
        except Exception as exc:
            print(f"{name}: failed ({type(exc).__name__}: {exc})")
            continue
        results[name] = us
        per_tok = us / (B * T)
        print(f"{name:<16} fwd+bwd {us / 1000:9.2f} ms   {per_tok:7.3f} us/token/layer   "
              f"max rel err vs torch {err:.1e}")
    if "torch" in results:
        for name, us in results.items():
            if name != "torch":
                print(f"{name} speed-up over torch chunked: {results['torch'] / us:.1f}x")


if __name__ == "__main__":
    main()
