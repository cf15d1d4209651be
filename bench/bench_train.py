"""Training benchmarks on CPU: throughput, long-sample memory and time, gradient exactness.

    python bench/bench_train.py throughput [--layers 6 --embd 512 --vocab 65536 --ctx 512 --steps 4]
    python bench/bench_train.py long --tokens 2048 16384 65536 [--ctx 512]
    python bench/bench_train.py exact [--tokens 2048 --ctx 512]
    python bench/bench_train.py linearity --layers 2 --embd 256 --vocab 4096 --ctx 256 --tokens 4 32 128

Every ratio is against a baseline measured in the same run. Throughput is
also given as the *fraction of measured matmul peak*: the model FLOPs per
second (6 * non-embedding params * tokens/s) divided by the fp32 FLOP/s of a
2048x2048 matmul this script measures next to each step. That is not MFU
(which divides by the hardware's rated peak); it says how close training
gets to this machine's own dense-matmul rate under its current load.

Long-sample memory and time are given relative to the first (shortest)
length. Each length runs in its own process so its RSS is its own. The
growth of RSS after the forward pass (the states kept for the backward)
is set against the bytes the kept states take by the formula in
``rwkv_plug/training/chunk_states.py`` (``rss_slope_vs_formula``: 1.0 means
memory grows by exactly the stored states).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def provenance() -> str:
    """Date, commit and machine of this run: docs/benchmarks.md labels every number with them."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = "+uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}{dirty}, "
            f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"load {load}")


def build_model(layers: int, embd: int, vocab: int, kernel: str = "torch", arch: str = "rwkv5"):
    from rwkv_plug.models import load_model

    if arch == "rwkv7":
        from rwkv_plug.models.init7 import init_state_dict
    else:
        from rwkv_plug.models.init import init_state_dict

    sd = init_state_dict(layers, embd, vocab, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    # the init zeroes some matrices; small noise makes every path carry gradient
    sd = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    return load_model(sd, kernel=kernel)


def make_opt(model):
    return torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)  # as the trainer does


def matmul_flops(n: int = 2048, reps: int = 4) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def train_step(model, opt, ids, ctx: int, truncated: bool = False) -> float:
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss

    mask = torch.ones_like(ids)
    t = time.perf_counter()
    out = sequence_loss(model, ids, mask, BpttSettings(ctx_len=ctx, truncated=truncated), train=True)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def throughput(a) -> dict:
    model = build_model(a.layers, a.embd, a.vocab, a.kernel, a.arch)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("emb."))
    opt = make_opt(model)
    ids = torch.randint(0, a.vocab, (1, a.ctx + 1))
    train_step(model, opt, ids, a.ctx)  # warm-up
    times, fracs, peaks = [], [], []
    for _ in range(a.steps):
        # the machine is shared: measure the matmul rate right next to every step
        before = matmul_flops()
        step = train_step(model, opt, ids, a.ctx)
        peak = (before + matmul_flops()) / 2
        times.append(step)
        peaks.append(peak)
        fracs.append(6 * params * (a.ctx / step) / peak)
    best = min(range(len(times)), key=lambda i: times[i])
    return {
        "arch": a.arch, "model": f"L{a.layers}-D{a.embd} vocab {a.vocab}", "ctx_len": a.ctx, "batch": 1, "dtype": "fp32",
        "kernel": a.kernel, "threads": torch.get_num_threads(), "non_embedding_params": params,
        "tokens_per_s_median": round(a.ctx / sorted(times)[len(times) // 2], 1),
        "tokens_per_s_best": round(a.ctx / times[best], 1),
        "frac_of_measured_matmul_peak_median": round(sorted(fracs)[len(fracs) // 2], 3),
        "frac_of_measured_matmul_peak_best": round(max(fracs), 3),
        "matmul_gflops": [round(x / 1e9, 1) for x in peaks], "step_s": [round(x, 2) for x in times],
    }


def current_rss() -> int:
    """Resident bytes now (Linux /proc), not the peak."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def kept_state_bytes(model, batch: int, tokens: int, ctx: int) -> int:
    """Bytes exact BPTT keeps between forward and backward, by the documented formula.

    Per kept state, per layer, ``2*B*C*itemsize + B*H*N*N*4`` (token shifts and the
    fp32 WKV state), for ``min(bptt_kept_states, chunks - 2) + 1`` states (the default
    budget), each with a CPU RNG state (docs/training.md#bounded-memory-kept-states).
    """
    from rwkv_plug.models.rwkv5 import HEAD_SIZE as N
    from rwkv_plug.training.recompute_schedule import DEFAULT_KEPT_STATES, slots_used

    chunks = -(-tokens // ctx)
    if chunks < 2:
        return 0
    item = next(model.parameters()).element_size()
    per_state = model.n_layer * (2 * batch * model.n_embd * item + batch * model.n_head * N * N * 4)
    rng = torch.get_rng_state().numel()
    return (slots_used(chunks - 1, DEFAULT_KEPT_STATES) + 1) * (per_state + rng)


def long_one(a) -> dict:
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss

    model = build_model(a.layers, a.embd, a.vocab, a.kernel, a.arch)
    opt = make_opt(model)
    train_step(model, opt, torch.randint(0, a.vocab, (1, a.ctx + 1)), a.ctx)  # warm-up, one chunk
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ids = torch.randint(0, a.vocab, (1, a.tokens[0] + 1))
    before = matmul_flops()
    rss_before = current_rss()
    t = time.perf_counter()
    out = sequence_loss(model, ids, torch.ones_like(ids), BpttSettings(ctx_len=a.ctx, truncated=a.truncated),
                        train=True)
    rss_fwd = current_rss()  # the kept states (and the last chunk's graph) are alive here
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    step = time.perf_counter() - t
    rate = (before + matmul_flops()) / 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"tokens": a.tokens[0], "step_s": round(step, 2), "peak_rss_gib": round(peak / 2**20, 3),
            "rss_after_1chunk_warmup_gib": round(base_rss / 2**20, 3), "matmul_gflops": round(rate / 1e9, 1),
            "rss_growth_over_forward_mib": round((rss_fwd - rss_before) / 2**20, 2),
            "kept_state_mib_formula": round(kept_state_bytes(model, 1, a.tokens[0], a.ctx) / 2**20, 2),
            # step time in units of "seconds at 1 TFLOP/s": removes the shared machine's load swings
            "step_tflop_equiv": round(step * rate / 1e12, 2)}


def long(a) -> list[dict]:
    rows = []
    for n in a.tokens:
        cmd = [sys.executable, __file__, "long-one", "--tokens", str(n), "--ctx", str(a.ctx), "--layers",
               str(a.layers), "--embd", str(a.embd), "--vocab", str(a.vocab), "--kernel", a.kernel, "--arch", a.arch]
        if a.truncated:
            cmd.append("--truncated")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        base = rows[0]
        rows[-1]["memory_vs_first"] = round(rows[-1]["peak_rss_gib"] / base["peak_rss_gib"], 3)
        rows[-1]["time_per_token_vs_first"] = round(
            (rows[-1]["step_s"] / n) / (base["step_s"] / base["tokens"]), 3)
        rows[-1]["load_normalised_time_per_token_vs_first"] = round(
            (rows[-1]["step_tflop_equiv"] / n) / (base["step_tflop_equiv"] / base["tokens"]), 3)
        # how much faster RSS grows than the kept states, from the first length to this one
        d_formula = rows[-1]["kept_state_mib_formula"] - base["kept_state_mib_formula"]
        d_rss = rows[-1]["rss_growth_over_forward_mib"] - base["rss_growth_over_forward_mib"]
        rows[-1]["rss_slope_vs_formula"] = round(d_rss / d_formula, 3) if d_formula > 0 else None
        print(json.dumps(rows[-1]), flush=True)
    return rows


def linearity(a) -> list[dict]:
    """Per-chunk forward and backward time against the number of chunks (best of 2 each)."""
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss

    model = build_model(a.layers, a.embd, a.vocab, a.kernel, a.arch)
    rows = []
    for n in a.tokens:  # here: chunk counts
        best = None
        for _ in range(2):
            ids = torch.randint(0, a.vocab, (1, a.ctx * n + 1))
            t = time.perf_counter()
            out = sequence_loss(model, ids, torch.ones_like(ids), BpttSettings(ctx_len=a.ctx), train=True)
            t1 = time.perf_counter()
            out.loss.backward()
            t2 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            cur = ((t1 - t) / n, (t2 - t1) / n)
            best = cur if best is None or sum(cur) < sum(best) else best
        rows.append({"chunks": n, "fwd_ms_per_chunk": round(best[0] * 1e3, 1),
                     "bwd_ms_per_chunk": round(best[1] * 1e3, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def exact(a) -> dict:
    """Chunked exact BPTT against one full-sequence backward (fp32, or fp64 with --fp64)."""
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss
    from rwkv_plug.training.loss import chunk_loss

    model = build_model(a.layers, a.embd, a.vocab, a.kernel, a.arch)
    if a.fp64:
        model = model.double()
    ids = torch.randint(0, a.vocab, (1, a.tokens[0] + 1), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    logits, _ = model(ids[:, :-1])
    chunk_loss(logits, ids[:, 1:], mask[:, 1:], mask[:, 1:].sum().float(), 1).backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # x070 freezes layer 0's v0/v1/v2
    ref = {n: p.grad.clone() for n, p in trained}
    model.zero_grad()
    sequence_loss(model, ids, mask, BpttSettings(ctx_len=a.ctx), train=True).loss.backward()
    rel = {n: ((p.grad - ref[n]).abs().max() / ref[n].abs().max()).item() for n, p in trained}
    worst = max(rel, key=rel.get)
    return {"arch": a.arch, "dtype": "fp64" if a.fp64 else "fp32", "model": f"L{a.layers}-D{a.embd}",
            "tokens": a.tokens[0], "ctx_len": a.ctx, "max_rel_diff": rel[worst], "worst_param": worst}


def arch_ratio(a) -> dict:
    """rwkv7 against rwkv5 tokens/s, the same shape, steps interleaved in one run."""
    models = {arch: build_model(a.layers, a.embd, a.vocab, a.kernel, arch) for arch in ("rwkv5", "rwkv7")}
    opts = {arch: make_opt(m) for arch, m in models.items()}
    ids = torch.randint(0, a.vocab, (1, a.ctx + 1))
    times: dict[str, list[float]] = {arch: [] for arch in models}
    for arch in models:  # warm-up
        train_step(models[arch], opts[arch], ids, a.ctx)
    for _ in range(a.steps):
        for arch in models:  # interleaved, so load swings hit both alike
            times[arch].append(train_step(models[arch], opts[arch], ids, a.ctx))
    med = {arch: sorted(ts)[len(ts) // 2] for arch, ts in times.items()}
    best = {arch: min(ts) for arch, ts in times.items()}
    return {"model": f"L{a.layers}-D{a.embd} vocab {a.vocab}", "ctx_len": a.ctx, "dtype": "fp32",
            "kernel": a.kernel, **{f"{arch}_tokens_per_s_median": round(a.ctx / med[arch], 1) for arch in med},
            "rwkv7_over_rwkv5_median": round(med["rwkv5"] / med["rwkv7"], 3),
            "rwkv7_over_rwkv5_best": round(best["rwkv5"] / best["rwkv7"], 3),
            "step_s": {arch: [round(x, 2) for x in ts] for arch, ts in times.items()}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["throughput", "long", "long-one", "exact", "linearity", "arch-ratio"])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--embd", type=int, default=512)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--tokens", type=int, nargs="+", default=[2048])
    p.add_argument("--kernel", default="torch")
    p.add_argument("--truncated", action="store_true")
    p.add_argument("--arch", default="rwkv5", choices=["rwkv5", "rwkv7"])
    p.add_argument("--fp64", action="store_true", help="exact: compare in fp64")
    a = p.parse_args()
    print(f"# {provenance()}", flush=True)
    modes = {"throughput": throughput, "long": long, "long-one": long_one, "exact": exact, "linearity": linearity,
             "arch-ratio": arch_ratio}
    result = modes[a.what](a)
    if a.what not in ("long", "linearity"):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
