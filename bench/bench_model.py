"""RWKV-v5 model speed on this machine: forward+backward tokens/s and the fraction of measured matmul peak.

Fraction of measured matmul peak = 6 x non-embedding params (head included) x
tokens/s, divided by the fp32 matmul FLOP/s this script measures on the same
machine in the same run. (Not MFU, which divides by the hardware's rated peak.)
The loss is plain mean cross-entropy (the trainer adds masking and L2Wrap).

    .venv/bin/python bench/bench_model.py [--layers 6] [--embd 512] [--vocab 65536]
        [--ctx 512] [--steps 5] [--kernel auto|torch|stub] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def matmul_flops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


class StubKernel:
    """Not RWKV: y = r. Isolates the cost of everything except the WKV op."""

    name = "stub (y = r, no WKV)"

    def wkv5(self, r, k, v, w, u, s0):
        return r * 1.0, s0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--embd", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--kernel", default="auto", help="a kernel name, or 'stub' to leave out WKV")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from rwkv_plug.models import load_model
    from rwkv_plug.models.init import init_state_dict

    sd = init_state_dict(args.layers, args.embd, args.vocab, seed=0, dtype=torch.float32)
    kernel = StubKernel() if args.kernel == "stub" else args.kernel
    model = load_model(sd, kernel=kernel).train()
    idx = torch.randint(0, args.vocab, (1, args.ctx + 1))
    x, y = idx[:, :-1], idx[:, 1:]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits, _ = model(x)
        torch.nn.functional.cross_entropy(logits.view(-1, args.vocab), y.reshape(-1)).backward()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    params = sum(p.numel() for n, p in model.named_parameters() if n != "emb.weight")
    # The machine may be shared: time the matmul baseline right before every
    # measured step and report medians of the per-step ratios.
    results = {}
    for name, fn, flops_per_token in (("fwd+bwd", step, 6), ("fwd", forward, 2)):
        fn()
        tps, fracs, peaks = [], [], []
        for _ in range(args.steps):
            peak = matmul_flops(reps=4)
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            tps.append(args.ctx / dt)
            fracs.append(flops_per_token * params * args.ctx / dt / peak)
            peaks.append(peak)
        results[name] = (statistics.median(tps), statistics.median(fracs), statistics.median(peaks))
    print(f"model L{args.layers}-D{args.embd} vocab {args.vocab}, ctx {args.ctx}, fp32, batch 1, "
          f"kernel {model.kernel_for(x.device, torch.float32).name}, "
          f"{params / 1e6:.1f}M non-embedding params, {torch.get_num_threads()} threads")
    for name, (tps, frac, peak) in results.items():
        print(f"{name:8s} {tps:8.1f} tokens/s  of measured matmul peak {frac:6.1%}  (median of {args.steps}; "
              f"fp32 matmul baseline {peak / 1e9:.0f} GFLOP/s)")
    if args.profile:
        with torch.profiler.profile() as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
