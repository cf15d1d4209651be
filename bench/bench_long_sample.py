"""A very long sample against a short one, same process: peak memory and time per token.

    python bench/bench_long_sample.py                       # 1M tokens vs 2k, L2-D128, world vocab, ctx 512
    python bench/bench_long_sample.py --tokens 262144 --kept 64 -1
    python bench/bench_long_sample.py --kept 64 auto        # the default budget, and one sized from the weights
    python bench/bench_long_sample.py --quick               # tiny sizes: checks that it runs

Issue 16's targets: with the default ``model.bptt_kept_states`` a 1M-token
sample's training step peaks at <= 1.1x the memory of a 2k-token one and
takes <= 1.5x its time per token. Each step is what fit does per microbatch
(exact BPTT forward and backward, then fused Adam), after a warm-up step of
the short sample (Adam's moments, lazy imports). Every ratio is against the
short sample measured in this run (its time: the median of 3 steps); nothing
here is a reference number.

Memory: on CUDA ``max_memory_allocated`` (live tensor bytes); on the CPU the
process's peak resident size, reset before each step (``/proc/self/clear_refs``)
with glibc made to return every block of 64 KiB or more when freed (the
script runs itself again with ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``
set; see tests/memory_probe.py), in a child process: that allocator setting
slows every step, so the times come from this process, without it. ``peak`` ratios include everything resident
(weights, Adam's moments, the libraries); ``step growth`` ratios only what the
step added on top of what was resident before it, the stricter comparison.
One line of JSON per budget in ``--kept``, plus the kept-state bytes the
formula of docs/training.md gives and the chunk runs the schedule adds, and
``extra_run_share``: the part of the long step's time spent in those added runs
(state-only chunk forwards, timed around ``_ChunkedPrefix._run``), so a quiet
run shows whether the gap to the target is the recompute or something else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import torch

_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+) kB", f.read()).group(1)) * 1024


class Peak:
    """Peak bytes over a block of code and the bytes resident before it."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            self.before = _rss("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS

    def stop(self) -> tuple[int, int]:
        """(peak, peak - resident before)."""
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _rss("VmHWM")
        return peak, peak - self.before


def build(a, device):
    from rwkv_plug.models import load_model
    from rwkv_plug.models.init import init_state_dict

    sd = init_state_dict(a.layers, a.embd, a.vocab, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    sd = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in sd.items()}  # every path carries gradient
    model = load_model(sd, kernel=a.kernel).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)  # as the trainer does
    return model, opt


class RunClock:
    """Seconds spent in exact BPTT's added chunk runs (state only), summed over a step."""

    def __init__(self) -> None:
        from rwkv_plug.training import bptt

        self.seconds, self._prefix = 0.0, bptt._ChunkedPrefix
        run = self._prefix._run

        def timed(ctx, start, stop):
            t = time.perf_counter()
            try:
                return run(ctx, start, stop)
            finally:
                self.seconds += time.perf_counter() - t

        self._prefix._run = staticmethod(timed)


def step(model, opt, ids, ctx: int, kept) -> float:
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss

    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = sequence_loss(model, ids, torch.ones_like(ids), BpttSettings(ctx_len=ctx, kept_states=kept), train=True)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def slots(model, kept) -> int:
    """``model.bptt_kept_states`` as a count (``auto`` sized from the model, as training does)."""
    from rwkv_plug.training.chunk_states import kept_slots

    return kept_slots(kept, model, model.zero_state(1), (torch.get_rng_state(),))


def kept_bytes(model, tokens: int, ctx: int, kept) -> int:
    """docs/training.md's formula: (min(M, n - 2) + 1) states and RNG states, B = 1."""
    from rwkv_plug.models.rwkv5 import HEAD_SIZE as N
    from rwkv_plug.training.recompute_schedule import slots_used

    n = -(-tokens // ctx)
    if n < 2:
        return 0
    item = next(model.parameters()).element_size()
    state = model.n_layer * (2 * model.n_embd * item + model.n_head * N * N * 4)
    return (slots_used(n - 1, slots(model, kept)) + 1) * (state + torch.get_rng_state().numel())


def measure(a, device, memory: bool) -> list[dict]:
    """The short sample, then the long one per budget: times, or (``memory``) peaks."""
    model, opt = build(a, device)
    short = torch.randint(0, a.vocab, (1, a.short + 1), device=device)
    long = torch.randint(0, a.vocab, (1, a.tokens + 1), device=device)
    peak = Peak(device)
    clock = RunClock()
    rows = []
    step(model, opt, short, a.ctx, a.kept[0])  # warm-up: Adam's moments, lazy imports
    for tokens, ids, kept in [(a.short, short, a.kept[0]), *((a.tokens, long, k) for k in a.kept)]:
        if memory:
            peak.start()
        clock.seconds = 0.0
        seconds = step(model, opt, ids, a.ctx, kept)
        if tokens == a.short and not memory:  # the baseline every ratio divides by: the median of 3 steps
            seconds = sorted([seconds, step(model, opt, ids, a.ctx, kept), step(model, opt, ids, a.ctx, kept)])[1]
        row = {"tokens": tokens, "kept": kept, "slots": slots(model, kept), "seconds": seconds,
               "run_seconds": clock.seconds}
        if memory:
            row["peak"], row["growth"] = peak.stop()
        row["kept_state_bytes"] = kept_bytes(model, tokens, a.ctx, kept)
        rows.append(row)
    return rows


def main() -> None:
    from rwkv_plug.training.recompute_schedule import DEFAULT_KEPT_STATES, extra_runs

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=1 << 20, help="the long sample (default 1M)")
    p.add_argument("--short", type=int, default=2048, help="the short sample it is compared with")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embd", type=int, default=128)
    p.add_argument("--vocab", type=int, default=65536, help="65536: the world vocabulary's size")
    p.add_argument("--kept", type=lambda v: v if v == "auto" else int(v), nargs="+", default=[DEFAULT_KEPT_STATES],
                   help="model.bptt_kept_states values to run the long sample with (-1: keep all; auto)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--kernel", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes (8k tokens vs 512, ctx 128, vocab 1024)")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.quick:
        a.tokens, a.short, a.ctx, a.vocab = 8192, 512, 128, 1024
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.memory_child:
        print(json.dumps(measure(a, device, memory=True)))
        return
    if device.type == "cuda":
        rows = measure(a, device, memory=True)
    else:
        # times here; peaks in a child whose glibc returns freed blocks (slow: every big block is mmap'ed)
        rows = measure(a, device, memory=False)
        child = subprocess.run([sys.executable, *sys.argv, "--memory-child"], capture_output=True, text=True,
                               env={**os.environ, **_MALLOC})
        if child.returncode != 0:
            sys.exit(f"the memory run failed:\n{child.stderr[-3000:]}")
        for row, mem in zip(rows, json.loads(child.stdout.strip().splitlines()[-1])):
            row["peak"], row["growth"] = mem["peak"], mem["growth"]
    base = rows[0]
    print(json.dumps({"sample": a.short, "model": f"L{a.layers}-D{a.embd} V{a.vocab} ctx {a.ctx}",
                      "device": str(device), "tokens_per_s": round(a.short / base["seconds"], 1),
                      "peak_mib": round(base["peak"] / 2**20, 1), "step_growth_mib": round(base["growth"] / 2**20, 1)}))
    chunks = -(-a.tokens // a.ctx)
    for row in rows[1:]:
        print(json.dumps({
            "sample": a.tokens, "bptt_kept_states": row["kept"], "slots": row["slots"], "chunks": chunks,
            "extra_runs_per_chunk": round(extra_runs(chunks - 1, row["slots"]) / chunks, 3),
            "extra_run_share": round(row["run_seconds"] / row["seconds"], 3),
            "kept_state_mib_formula": round(row["kept_state_bytes"] / 2**20, 2),
            "peak_vs_short": round(row["peak"] / base["peak"], 3), "target_peak": 1.1,
            "step_growth_vs_short": round(row["growth"] / max(base["growth"], 1), 3),
            "time_per_token_vs_short": round((row["seconds"] / a.tokens) / (base["seconds"] / a.short), 3),
            "target_time": 1.5, "tokens_per_s": round(a.tokens / row["seconds"], 1),
        }), flush=True)


if __name__ == "__main__":
    main()
