"""The chunked head + loss and the pooled embedding gradient against the earlier paths, in one run.

    python bench/bench_head.py throughput [--layers 6 --embd 512 --vocab 65536 --ctx 512 --steps 5]
    python bench/bench_head.py memory [--ctx 4096]
    python bench/bench_head.py chunk-sizes [--sizes 0 256 512 1024 2048 4096]
    python bench/bench_head.py embedding
    python bench/bench_head.py all --quick        # every mode at tiny sizes: checks the script runs

*before* is ``model.head_chunk_tokens: 0`` (the full (T, V) logits) with ``nn.Embedding``'s own
backward; *after* is the default chunk (``DEFAULT_HEAD_CHUNK_TOKENS``) with
``rwkv_plug.models.embedding.Embedding``. Every ratio is against the baseline measured in the
same run, steps interleaved so load swings hit both alike.

* throughput: training tokens/s (fp32, batch 1, one ctx chunk per step, fused Adam);
  target ``after_over_before_median >= 1.2``.
* memory: one training step at ``--ctx`` in a fresh process per variant (CUDA: max allocated;
  CPU: peak RSS, and its rise during the step); target: the logits share (~3 (T, V) fp32
  tensors, ``logits_gib``) gone.
* chunk-sizes: the head + loss alone (fwd+bwd of :func:`head_loss`, ``--ctx`` tokens) per chunk
  size, relative to the unchunked one; picks the default.
* embedding: fwd+bwd of one embedding lookup, ``nn.Embedding`` against the pooled one.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import build_model, make_opt, provenance  # noqa: E402


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _variant(model, before: bool):
    """The model as the earlier code ran it (before) or as it runs now."""
    if before:
        model.emb.__class__ = torch.nn.Embedding  # nn.Embedding's own forward and backward
    return model


def _settings(ctx: int, before: bool):
    from rwkv_plug.training.bptt import BpttSettings
    from rwkv_plug.training.head_loss import DEFAULT_HEAD_CHUNK_TOKENS

    return BpttSettings(ctx_len=ctx, head_chunk=0 if before else DEFAULT_HEAD_CHUNK_TOKENS)


def _step(model, opt, ids, settings) -> float:
    from rwkv_plug.training.bptt import sequence_loss

    t = time.perf_counter()
    out = sequence_loss(model, ids, torch.ones_like(ids), settings, train=True)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)  # as Lightning does
    return time.perf_counter() - t


def throughput(a) -> dict:
    ids = torch.randint(0, a.vocab, (1, a.ctx + 1), generator=torch.Generator().manual_seed(0))
    runs = {}
    for name in ("before", "after"):
        model = _variant(build_model(a.layers, a.embd, a.vocab, a.kernel, a.arch), name == "before")
        runs[name] = (model, make_opt(model), _settings(a.ctx, name == "before"))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, (m, o, s) in runs.items():  # warm-up
        _step(m, o, ids, s)
    for _ in range(a.steps):
        for name, (m, o, s) in runs.items():
            times[name].append(_step(m, o, ids, s))
    med = {k: _median(v) for k, v in times.items()}
    return {"what": "throughput", "arch": a.arch, "model": f"L{a.layers}-D{a.embd} vocab {a.vocab}", "ctx_len": a.ctx,
            "dtype": "fp32", "batch": 1, "kernel": a.kernel,
            **{f"{k}_tokens_per_s_median": round(a.ctx / v, 1) for k, v in med.items()},
            "after_over_before_median": round(med["before"] / med["after"], 3),
            "after_over_before_best": round(min(times["before"]) / min(times["after"]), 3),
            "step_s": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_one(a) -> dict:
    before = a.variant == "before"
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _variant(build_model(a.layers, a.embd, a.vocab, a.kernel, a.arch), before).to(dev)
    opt = make_opt(model)
    settings = _settings(a.ctx, before)
    small = torch.randint(0, a.vocab, (1, 9), device=dev)
    _step(model, opt, small, _settings(8, before))  # optimizer state and kernels exist from here on
    ids = torch.randint(0, a.vocab, (1, a.ctx + 1), device=dev)
    out = {"variant": a.variant, "device": dev.type, "ctx_len": a.ctx}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        rest = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _step(model, opt, ids, settings)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        rest = _rss()
        _step(model, opt, ids, settings)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.update(peak_gib=round(peak / 2**30, 3), rest_gib=round(rest / 2**30, 3),
               step_rise_gib=round((peak - rest) / 2**30, 3))
    return out


def memory(a) -> dict:
    rows = {}
    for variant in ("before", "after"):
        cmd = [sys.executable, __file__, "memory-one", "--variant", variant, "--ctx", str(a.ctx), "--layers",
               str(a.layers), "--embd", str(a.embd), "--vocab", str(a.vocab), "--kernel", a.kernel, "--arch", a.arch]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    logits = a.ctx * a.vocab * 4 / 2**30
    return {"what": "memory", "model": f"L{a.layers}-D{a.embd} vocab {a.vocab}", "ctx_len": a.ctx,
            "device": rows["after"]["device"], "logits_gib": round(logits, 3), **rows,
            "peak_saved_gib": round(rows["before"]["peak_gib"] - rows["after"]["peak_gib"], 3),
            "peak_saved_in_logits": round((rows["before"]["peak_gib"] - rows["after"]["peak_gib"]) / logits, 2),
            "after_over_before_peak": round(rows["after"]["peak_gib"] / rows["before"]["peak_gib"], 3)}


def chunk_sizes(a) -> dict:
    """fwd+bwd of the head and loss alone, per chunk size, interleaved; relative to chunk 0."""
    from rwkv_plug.training.head_loss import head_loss

    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, a.ctx, a.embd, generator=g).requires_grad_()
    w = (torch.randn(a.vocab, a.embd, generator=g) * 0.02).requires_grad_()
    t = torch.randint(0, a.vocab, (1, a.ctx), generator=g)
    m = torch.ones(1, a.ctx, dtype=torch.long)
    denom = m.sum().float()
    times: dict[int, list[float]] = {s: [] for s in a.sizes}
    for rep in range(a.steps + 1):
        for s in a.sizes:
            start = time.perf_counter()
            head_loss(h, w, t, m, denom, 1, True, s).backward()
            h.grad = w.grad = None
            if rep:  # the first round warms up
                times[s].append(time.perf_counter() - start)
    med = {s: _median(v) for s, v in times.items()}
    base = med[a.sizes[0]]
    return {"what": "chunk-sizes", "tokens": a.ctx, "embd": a.embd, "vocab": a.vocab,
            "ms_median": {s: round(v * 1e3, 1) for s, v in med.items()},
            f"speed_vs_chunk_{a.sizes[0]}": {s: round(base / v, 3) for s, v in med.items()}}


def embedding(a) -> dict:
    """fwd+bwd of one lookup of ``--ctx`` ids; the gradient set to None after each, as the trainer does."""
    from rwkv_plug.models.embedding import Embedding

    plain = torch.nn.Embedding(a.vocab, a.embd)
    pooled = Embedding(a.vocab, a.embd)
    ids = torch.randint(0, a.vocab, (1, a.ctx))
    grad = torch.randn(1, a.ctx, a.embd)
    times: dict[str, list[float]] = {"nn_embedding": [], "pooled": []}
    for rep in range(a.steps * 3 + 1):
        for name, e in (("nn_embedding", plain), ("pooled", pooled)):
            start = time.perf_counter()
            e(ids).backward(grad)
            e.weight.grad = None
            if rep:
                times[name].append(time.perf_counter() - start)
    med = {k: _median(v) for k, v in times.items()}
    return {"what": "embedding", "vocab": a.vocab, "embd": a.embd, "tokens": a.ctx,
            **{f"{k}_ms_median": round(v * 1e3, 2) for k, v in med.items()},
            "pooled_over_nn_speed": round(med["nn_embedding"] / med["pooled"], 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["throughput", "memory", "memory-one", "chunk-sizes", "embedding", "all"])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--embd", type=int, default=512)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--ctx", type=int, default=None, help="default: 512 (throughput, chunk-sizes, embedding), "
                   "4096 (memory)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--sizes", type=int, nargs="+", default=[0, 256, 512, 1024, 2048, 4096])
    p.add_argument("--kernel", default="torch")
    p.add_argument("--arch", default="rwkv5", choices=["rwkv5", "rwkv7"])
    p.add_argument("--variant", choices=["before", "after"], default="after")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    a = p.parse_args()
    if a.quick:
        a.layers, a.embd, a.vocab, a.steps = 1, 64, 512, 2
        a.sizes = [0, 16, 64]
    print(f"# {provenance()}", flush=True)
    modes = {"throughput": throughput, "memory": memory, "memory-one": memory_one, "chunk-sizes": chunk_sizes,
             "embedding": embedding}
    for name in (modes if a.what == "all" else [a.what]):
        if name == "memory-one" and a.what == "all":
            continue
        ctx = a.ctx
        if a.ctx is None:
            a.ctx = (256 if a.quick else 4096) if name == "memory" else (64 if a.quick else 512)
        print(json.dumps(modes[name](a)), flush=True)
        a.ctx = ctx


if __name__ == "__main__":
    main()
