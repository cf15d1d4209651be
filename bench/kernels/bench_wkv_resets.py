"""CPU benchmark: one torch-kernel call with state resets against the same call without.

    .venv/bin/python bench/kernels/bench_wkv_resets.py [--op wkv5] [--batch 8 --T 512 --heads 8]
    .venv/bin/python bench/kernels/bench_wkv_resets.py --quick     # tiny sizes: checks that it runs

Packed training (``data.packing_state: reset``) calls the kernel with ``resets``
flags at the records' starts; it should cost about what the call without them
costs. Forward + backward of both, on the same inputs, in alternating rounds so
machine load hits both alike; prints the median and best time of each and the
ratios resets/plain (target: about 1.0, issue #14).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _inputs(op: str, B: int, T: int, H: int, N: int):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.5  # noqa: E731
    s0, fresh = rnd(B, H, N, N), rnd(B, H, N, N)
    if op == "wkv5":
        w = torch.exp(-torch.exp(torch.linspace(-6, 2, H * N))).view(H, N)
        xs = [rnd(B, T, H, N) for _ in range(3)] + [w, rnd(H, N)]  # r k v w u
    else:
        kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
        w = torch.rand(B, T, H, N, generator=g) * 0.4 + 0.55
        xs = [rnd(B, T, H, N), w, rnd(B, T, H, N), rnd(B, T, H, N), -kk, kk * 0.5]  # r w k v a b
    return [x.requires_grad_() for x in (*xs, s0, fresh)]


def _flags(B: int, T: int, every: int) -> torch.Tensor:
    """A reset every ``every`` tokens from token 0 (records of that length packed end to end)."""
    f = torch.zeros(B, T, dtype=torch.bool)
    f[:, ::every] = True
    return f


def _call(fn, inputs, grads, resets):
    *ins, s0, fresh = inputs
    t0 = time.perf_counter()
    if resets is None:
        y, sT = fn(*ins, s0)
    else:
        y, sT = fn(*ins, s0, resets=resets, s_reset=fresh)
    torch.autograd.backward([y, sT], grads)  # dense upstream gradients, as in training
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="wkv5", choices=["wkv5", "wkv7"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--T", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--every", type=int, default=128, help="tokens between resets (a record's span)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, two rounds: checks that it runs")
    a = ap.parse_args()
    if a.quick:
        a.batch, a.T, a.heads, a.head_size, a.every, a.rounds = 2, 128, 2, 16, 32, 2
    if a.op == "wkv5":
        from rwkv_plug.kernels.wkv5.torch_chunked import wkv5_chunked as fn
    else:
        from rwkv_plug.kernels.wkv7.torch_chunked import wkv7_chunked as fn
    B, T, H, N = a.batch, a.T, a.heads, a.head_size
    inputs = _inputs(a.op, B, T, H, N)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(B, T, H, N, generator=g), torch.randn(B, H, N, N, generator=g)]
    flags = _flags(B, T, a.every)
    arms = {"plain": None, "resets": flags}
    for resets in arms.values():  # warm-up
        _call(fn, inputs, grads, resets)
    secs: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(a.rounds):
        for name, resets in arms.items():
            secs[name].append(_call(fn, inputs, grads, resets))
    med = {name: statistics.median(s) for name, s in secs.items()}
    best = {name: min(s) for name, s in secs.items()}
    print(f"{a.op} torch kernel, forward+backward, B={B} T={T} H={H} N={N} fp32, a reset every "
          f"{a.every} tokens, torch threads={torch.get_num_threads()}, {a.rounds} alternating rounds")
    for name in arms:
        print(f"  {name:<7} median {med[name] * 1e3:8.1f} ms, best {best[name] * 1e3:8.1f} ms per call")
    print(f"resets/plain time per call: median {med['resets'] / med['plain']:.2f}x, "
          f"best {best['resets'] / best['plain']:.2f}x (target: about 1.0x)")


if __name__ == "__main__":
    main()
