"""Packed-with-reset training vs unpacked, on the same short-record SFT data, in one run.

    python bench/bench_packing.py [--layers 6 --embd 512 --vocab 65536 --ctx 512 --records 256 --micro 1 8]
    python bench/bench_packing.py --quick          # tiny sizes: checks that it runs
    python bench/bench_packing.py --lengths lognormal --micro 8 --arms unpacked packed

Short SFT records (mean length ctx_len / 4, the prompt half masked) are trained
three ways per round, for each ``--micro`` (rows per microbatch). ``--lengths``
picks their spread: ``uniform`` in [ctx/8, 3 ctx/8] (narrow: a microbatch's
longest row is close to its mean), or ``lognormal`` (sigma 0.8, capped at
ctx_len: a long right tail, the usual shape of instruction/chat datasets' lengths,
so a microbatch's longest row is often several times its mean):

* ``unpacked, padded to longest``: each record a row, a microbatch padded to its
  longest row (what this trainer does, training/batches.py);
* ``unpacked, padded to ctx_len``: each record a row, every row padded to ctx_len
  (what the earlier RWKV trainers do); a second, weaker baseline;
* ``packed with resets``: ``data.packing_state: reset`` (records aligned to
  ``--align`` inside rows capped at ctx_len, the state reset at every record).

All three see every record once per round and train the same target tokens; a
round runs forward + backward + an optimizer step for every microbatch. The arms
alternate round by round so machine load hits them alike; each ratio is the
median packed rate over a baseline's median rate of *trained* tokens per second.
Target (issue #14): packed >= 2x unpacked padded to longest, when records average
a quarter of ctx_len.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_train import build_model, make_opt, provenance  # noqa: E402


LOGNORMAL_SIGMA = 0.8


def record_length(ctx: int, spread: str, g: torch.Generator) -> int:
    """One record's length, mean about ctx/4: uniform in [ctx/8, 3 ctx/8], or lognormal capped at ctx."""
    if spread == "uniform":
        return int(torch.randint(max(2, ctx // 8), max(3, 3 * ctx // 8) + 1, (1,), generator=g))
    # exp(N(mu, sigma)) has mean exp(mu + sigma^2 / 2); mu is set so that mean is ctx / 4
    mu = math.log(ctx / 4) - LOGNORMAL_SIGMA ** 2 / 2
    draw = math.exp(mu + LOGNORMAL_SIGMA * float(torch.randn((), generator=g)))
    return min(ctx, max(2, round(draw)))


def records(n: int, ctx: int, vocab: int, spread: str = "uniform",
            seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``n`` SFT-like records of mean length about ctx/4 (see ``record_length``), prompt half masked."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = record_length(ctx, spread, g)
        ids = torch.randint(1, vocab, (length,), generator=g).tolist()
        prompt = length // 2
        out.append((ids, [0] * prompt + [1] * (length - prompt)))
    return out


def unpacked_batches(rows, micro: int):
    from rwkv_plug.training.batches import collate

    dicts = [{"input_ids": i, "loss_mask": m} for i, m in rows]
    return [collate(dicts[s:s + micro]) for s in range(0, len(dicts), micro)]


def packed_batches(rows, micro: int, ctx: int, align: int):
    import datasets

    from rwkv_plug.data.pack import pack
    from rwkv_plug.training.batches import collate

    ds = datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "loss_mask": [r[1] for r in rows]})
    packed = list(pack(ds, ctx, ctx, in_sequence=True, state="reset", align=align).dataset)
    return [collate(packed[s:s + micro]) for s in range(0, len(packed), micro)]


def ctx_padded_batches(rows, micro: int, ctx: int):
    """Unpacked microbatches with every row padded to ``ctx`` (id 0, mask 0), as earlier RWKV trainers do."""
    out = []
    for b in unpacked_batches(rows, micro):
        extra = ctx - b["input_ids"].shape[1]
        out.append({k: torch.nn.functional.pad(b[k], (0, extra)) for k in ("input_ids", "loss_mask")})
    return out


def run_round(model, opt, batches, settings) -> tuple[float, int]:
    """One pass over ``batches`` (train step each); returns (seconds, trained tokens)."""
    from rwkv_plug.training.bptt import sequence_loss

    trained = 0
    t0 = time.perf_counter()
    for b in batches:
        out = sequence_loss(model, b["input_ids"], b["loss_mask"], settings, train=True, resets=b.get("resets"))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        trained += out.trained_tokens
    return time.perf_counter() - t0, trained


ARMS = {
    "unpacked": "unpacked, padded to longest in microbatch",
    "ctx": "unpacked, padded to ctx_len (earlier trainers)",
    "packed": "packed with resets",
}


def compare(model, opt, rows, micro: int, a, settings) -> None:
    """The three arms at one microbatch size, alternating rounds; prints their table."""
    build = {
        "unpacked": lambda: unpacked_batches(rows, micro),
        "ctx": lambda: ctx_padded_batches(rows, micro, a.ctx),
        "packed": lambda: packed_batches(rows, micro, a.ctx, a.align),
    }
    arms = {name: build[name]() for name in ARMS if name in a.arms}
    for batches in arms.values():  # warm-up: kernels resolved, allocator primed
        run_round(model, opt, batches[:1], settings)
    rates: dict[str, list[float]] = {name: [] for name in arms}
    trained = {}
    for _ in range(a.rounds):
        for name, batches in arms.items():
            secs, tokens = run_round(model, opt, batches, settings)
            rates[name].append(tokens / secs)
            trained[name] = tokens
    if len(set(trained.values())) != 1:
        raise SystemExit(f"trained tokens differ: {trained} (every arm must train every target once)")
    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"microbatch {micro}: {trained['packed']} trained tokens per round in each arm")
    print(f"  {'arm':<47} {'microbatches':>12} {'computed tokens':>15} {'trained tok/s':>13}  rounds")
    for name, batches in arms.items():
        computed = sum(b["input_ids"].numel() for b in batches)
        print(f"  {ARMS[name]:<47} {len(batches):>12} {computed:>15} {med[name]:>13.0f}  "
              f"{', '.join(f'{r:.0f}' for r in rates[name])}")
    if "unpacked" in med:
        print(f"  packed / unpacked padded to longest: {med['packed'] / med['unpacked']:.2f}x (target >= 2x)")
    if "ctx" in med:
        print(f"  packed / unpacked padded to ctx_len: {med['packed'] / med['ctx']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--embd", type=int, default=512)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--records", type=int, default=256)
    p.add_argument("--micro", type=int, nargs="+", default=[8],
                   help="rows per microbatch, all arms; several values: one table each")
    p.add_argument("--align", type=int, default=32, help="data.packing_align")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each arm, alternating")
    p.add_argument("--arch", default="rwkv5", choices=["rwkv5", "rwkv7"])
    p.add_argument("--lengths", default="uniform", choices=["uniform", "lognormal"],
                   help="spread of the record lengths (mean ctx/4 either way)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                   help="which arms to run (packed always runs)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks that it runs")
    a = p.parse_args()
    if a.quick:
        a.layers, a.embd, a.vocab, a.ctx, a.records, a.micro, a.rounds = 1, 64, 128, 128, 24, [1, 4], 1
    if a.ctx % a.align:
        raise SystemExit(f"--ctx {a.ctx} must be a multiple of --align {a.align} (as model.ctx_len and "
                         "data.packing_align must be)")
    from rwkv_plug.training.bptt import BpttSettings

    model = build_model(a.layers, a.embd, a.vocab, "torch", a.arch)
    model.require_resets()
    opt = make_opt(model)
    a.arms = sorted(set(a.arms) | {"packed"}, key=list(ARMS).index)
    rows = records(a.records, a.ctx, a.vocab, a.lengths)
    settings = BpttSettings(ctx_len=a.ctx)
    print(provenance())
    lengths = sorted(len(r[0]) for r in rows)
    print(f"{a.arch} L{a.layers} C{a.embd} V{a.vocab}, ctx_len {a.ctx}, {a.records} records, {a.lengths} "
          f"lengths (mean {sum(lengths) / len(lengths):.0f}, median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]} tokens), align {a.align}, "
          f"torch threads {torch.get_num_threads()}")
    for micro in a.micro:
        compare(model, opt, rows, micro, a, settings)


if __name__ == "__main__":
    main()
