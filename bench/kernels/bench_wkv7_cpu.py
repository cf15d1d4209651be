"""CPU benchmark: the chunked torch wkv7 against the per-step recurrence.

Prints tokens/s for forward and forward+backward of both, and the ratio,
measured in the same run on the same inputs (model-like inputs: a = -kk,
b = kk * a_gate with kk L2-normalised, decays in (exp(-e^-0.5), 1)). Run:

    .venv/bin/python bench/kernels/bench_wkv7_cpu.py [--T 512] [--heads 8] [--batch 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from rwkv_plug.kernels.wkv7.reference import wkv7_recurrent
from rwkv_plug.kernels.wkv7.torch_chunked import CHUNK, wkv7_chunked


def _inputs(B: int, T: int, H: int, N: int, grad: bool):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    r, k, v = (rnd(B, T, H, N) * 0.5 for _ in range(3))
    w = torch.exp(-0.606531 * torch.sigmoid(rnd(B, T, H, N)))
    kk = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
    gate = torch.sigmoid(rnd(B, T, H, N))
    s0 = rnd(B, H, N, N)
    return [x.requires_grad_(grad) for x in (r, w, k, v, -kk, kk * gate, s0)]


def _time(fn, inputs, backward: bool, repeats: int) -> float:
    """Best-of-``repeats`` seconds for one call (plus backward)."""
    best = float("inf")
    gy, gs = torch.randn_like(inputs[0]), torch.randn_like(inputs[-1])  # dense, as in training
    for _ in range(repeats + 1):  # first call warms up
        t0 = time.perf_counter()
        y, sT = fn(*inputs)
        if backward:
            torch.autograd.backward([y, sT], [gy, gs])
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=CHUNK)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    B, T, H, N = a.batch, a.T, a.heads, a.head_size
    print(f"wkv7 CPU benchmark: B={B} T={T} H={H} N={N} chunk={a.chunk} fp32, "
          f"torch threads={torch.get_num_threads()}")

    def chunked(*xs):
        return wkv7_chunked(*xs, chunk=a.chunk)

    for label, backward in (("forward", False), ("forward+backward", True)):
        ins = _inputs(B, T, H, N, backward)
        with torch.enable_grad() if backward else torch.no_grad():
            t_rec = _time(wkv7_recurrent, ins, backward, a.repeats)
            t_chk = _time(chunked, ins, backward, a.repeats)
        tok = B * T
        print(f"{label:<17} recurrence {tok / t_rec:>10.0f} tok/s   "
              f"chunked {tok / t_chk:>10.0f} tok/s   ratio {t_rec / t_chk:5.1f}x")


if __name__ == "__main__":
    main()
