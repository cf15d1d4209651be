"""CPU benchmark: the chunked torch wkv5 against the per-step recurrence.

Prints tokens/s for forward and forward+backward of both, and the ratio,
measured in the same run on the same inputs. Run:

    .venv/bin/python bench/kernels/bench_wkv_cpu.py [--T 1024] [--heads 4] [--batch 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from rwkv_plug.kernels.wkv5.reference import wkv5_recurrent
from rwkv_plug.kernels.wkv5.torch_chunked import wkv5_chunked


def _inputs(B: int, T: int, H: int, N: int, grad: bool):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(B, T, H, N, generator=g) * 0.5 for _ in range(3)]
    w = torch.exp(-torch.exp(torch.linspace(-6, 2, H * N))).view(H, N)
    u = torch.randn(H, N, generator=g) * 0.5
    s0 = torch.randn(B, H, N, N, generator=g)
    return [x.requires_grad_(grad) for x in (*xs, w, u, s0)]


def _time(fn, inputs, backward: bool, repeats: int) -> float:
    """Best-of-``repeats`` seconds for one call (plus backward)."""
    best = float("inf")
    r, s0 = inputs[0], inputs[-1]
    # Dense upstream gradients as in training (y.sum() would hand the backward
    # stride-0 tensors, which send CPU matmuls down a slow path).
    gy, gs = torch.randn_like(r), torch.randn_like(s0)
    for _ in range(repeats + 1):  # first call warms up
        t0 = time.perf_counter()
        y, sT = fn(*inputs)
        if backward:
            torch.autograd.backward([y, sT], [gy, gs])
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    B, T, H, N = a.batch, a.T, a.heads, a.head_size
    threads = torch.get_num_threads()
    print(f"wkv5 CPU benchmark: B={B} T={T} H={H} N={N} fp32, torch threads={threads}")
    for label, backward in (("forward", False), ("forward+backward", True)):
        ins = _inputs(B, T, H, N, backward)
        ctx = torch.enable_grad() if backward else torch.no_grad()
        with ctx:
            t_rec = _time(wkv5_recurrent, ins, backward, a.repeats)
            t_chk = _time(wkv5_chunked, ins, backward, a.repeats)
        tok = B * T
        print(f"{label:<17} recurrence {tok / t_rec:>10.0f} tok/s   "
              f"chunked {tok / t_chk:>10.0f} tok/s   ratio {t_rec / t_chk:5.1f}x")


if __name__ == "__main__":
    main()
