"""Tuning-mode benchmarks on CPU: full fine-tuning vs LoRA vs state tuning.

    python bench/bench_tuning.py compare [--layers 12 --embd 768 --vocab 65536 --ctx 512 --steps 4 --lora-r 32]
    python bench/bench_tuning.py long --tokens 2048 65536 [--ctx 512]

``compare`` runs each mode (full, lora, state) in its own process, so each peak RSS is
its own, on the same model and sample: peak RSS, tokens/s (median of ``--steps``
steps after a warm-up), trainable parameters, and the optimizer state's bytes (the
trainer's own optimizer and groups, after a step), each also as a ratio to full.

``long`` runs state tuning on one sample of each ``--tokens`` length (own process each)
and gives the peak RSS relative to the first length: the frozen weights are shared, so
what grows is only the exact engine's kept states (see ``rwkv_plug/training/chunk_states.py``).

Tiny smoke run: ``compare --layers 2 --embd 64 --vocab 256 --ctx 32 --steps 2`` and
``long --layers 2 --embd 64 --vocab 256 --ctx 32 --tokens 64 256``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import build_model, provenance  # noqa: E402

MODES = ("full", "lora", "state")
OPTIM = {"weight_decay": 0.0, "layerwise_lr": True, "beta1": 0.9, "beta2": 0.99, "adam_eps": 1e-8}


def tuned_model(a, mode: str):
    from rwkv_plug.training.tuning import apply_tuning

    model = build_model(a.layers, a.embd, a.vocab, a.kernel)
    m = {"tuning": mode, "state_file": None, "lora_r": a.lora_r, "lora_alpha": a.lora_r, "lora_dropout": 0.0,
         "lora_target_modules": None, "lora_adapter": None, "lora_options": {}}
    apply_tuning(model, m, log=lambda _: None)
    return model


def optimizer(model):
    from rwkv_plug.models.loading import arch_of
    from rwkv_plug.training.optim import LrSchedule, build_optimizer

    opt, _ = build_optimizer(model, {**OPTIM}, LrSchedule(1e-5, 1e-5), arch_of(model))
    return opt


def step(model, opt, ids, ctx: int) -> float:
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss

    t = time.perf_counter()
    out = sequence_loss(model, ids, torch.ones_like(ids), BpttSettings(ctx_len=ctx), train=True)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def optimizer_state_bytes(opt) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def one_mode(a) -> dict:
    model = tuned_model(a, a.mode)
    opt = optimizer(model)
    ids = torch.randint(0, a.vocab, (1, a.ctx + 1), generator=torch.Generator().manual_seed(0))
    step(model, opt, ids, a.ctx)  # warm-up; the optimizer state exists from here on
    times = [step(model, opt, ids, a.ctx) for _ in range(a.steps)]
    return {
        "mode": a.mode, "model": f"L{a.layers}-D{a.embd} vocab {a.vocab}", "ctx_len": a.ctx, "dtype": "fp32",
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "optimizer_state_bytes": optimizer_state_bytes(opt),
        "tokens_per_s_median": round(a.ctx / statistics.median(times), 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


def long_one(a) -> dict:
    model = tuned_model(a, "state")
    opt = optimizer(model)
    step(model, opt, torch.randint(0, a.vocab, (1, a.ctx + 1)), a.ctx)  # warm-up, one chunk
    ids = torch.randint(0, a.vocab, (1, a.tokens[0] + 1), generator=torch.Generator().manual_seed(0))
    seconds = step(model, opt, ids, a.ctx)
    return {"tokens": a.tokens[0], "ctx_len": a.ctx, "step_s": round(seconds, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def _child(a, what: str, **over) -> dict:
    args = {"--layers": a.layers, "--embd": a.embd, "--vocab": a.vocab, "--ctx": a.ctx, "--steps": a.steps,
            "--kernel": a.kernel, "--lora-r": a.lora_r, **over}
    cmd = [sys.executable, __file__, what] + [str(x) for k, v in args.items() for x in (k, v)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(a) -> list[dict]:
    rows = []
    for mode in MODES:
        rows.append(_child(a, "one-mode", **{"--mode": mode}))
        full = rows[0]
        row = rows[-1]
        row["optimizer_state_vs_full"] = round(row["optimizer_state_bytes"] / full["optimizer_state_bytes"], 5)
        rows[-1]["peak_rss_vs_full"] = round(rows[-1]["peak_rss_gib"] / full["peak_rss_gib"], 3)
        rows[-1]["tokens_per_s_vs_full"] = round(rows[-1]["tokens_per_s_median"] / full["tokens_per_s_median"], 3)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def long(a) -> list[dict]:
    rows = []
    for n in a.tokens:
        rows.append(_child(a, "long-one", **{"--tokens": n}))
        rows[-1]["peak_rss_vs_first"] = round(rows[-1]["peak_rss_gib"] / rows[0]["peak_rss_gib"], 3)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["compare", "long", "one-mode", "long-one"])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--embd", type=int, default=768)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lora-r", dest="lora_r", type=int, default=32)
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 65536])
    p.add_argument("--mode", choices=MODES, default="full")
    p.add_argument("--kernel", default="torch")
    a = p.parse_args()
    if a.what in ("compare", "long"):
        print(f"# {provenance()}", flush=True)
    if a.what == "compare":
        compare(a)
    elif a.what == "long":
        long(a)
    else:
        print(json.dumps(one_mode(a) if a.what == "one-mode" else long_one(a)), flush=True)


if __name__ == "__main__":
    main()
