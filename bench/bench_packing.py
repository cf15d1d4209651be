"""Packed-with-reset training vs unpacked, on the same short-record SFT data, in one run.

    python bench/bench_packing.py [--layers 6 --embd 512 --vocab 65536 --ctx 512 --records 256 --micro 8]
    python bench/bench_packing.py --quick          # tiny sizes: checks that it runs

Short SFT records (lengths uniform around ctx_len / 4, the prompt half masked) are
trained twice per round: unpacked (each record a row, microbatches padded to their
longest row) and packed by ``data.packing_state: reset`` (records aligned to
``--align`` inside rows capped at ctx_len, the state reset at every record). Both
see every record once per round and train the same target tokens; a round runs
forward + backward + an optimizer step for every microbatch. The rounds alternate
(unpacked, packed, unpacked, ...) so machine load hits both alike; the printed
ratio is the median packed rate over the median unpacked rate of *trained* tokens
per second. Target (issue #14): >= 2x when records average a quarter of ctx_len.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_train import build_model, make_opt, provenance  # noqa: E402


def records(n: int, ctx: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``n`` SFT-like records, lengths uniform in [ctx/8, 3 ctx/8] (mean ctx/4), prompt half masked."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(max(2, ctx // 8), max(3, 3 * ctx // 8) + 1, (1,), generator=g))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--embd", type=int, default=512)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--records", type=int, default=256)
    p.add_argument("--micro", type=int, default=8, help="rows per microbatch, both ways")
    p.add_argument("--align", type=int, default=32, help="data.packing_align")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each, alternating")
    p.add_argument("--arch", default="rwkv5", choices=["rwkv5", "rwkv7"])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks that it runs")
    a = p.parse_args()
    if a.quick:
        a.layers, a.embd, a.vocab, a.ctx, a.records, a.micro, a.rounds = 1, 64, 128, 128, 24, 4, 1
    from rwkv_plug.training.bptt import BpttSettings

    model = build_model(a.layers, a.embd, a.vocab, "torch", a.arch)
    model.require_resets()
    opt = make_opt(model)
    rows = records(a.records, a.ctx, a.vocab)
    plain = unpacked_batches(rows, a.micro)
    packed = packed_batches(rows, a.micro, a.ctx, a.align)
    settings = BpttSettings(ctx_len=a.ctx)
    run_round(model, opt, plain[:1], settings)  # warm-up: kernels resolved, allocator primed
    run_round(model, opt, packed[:1], settings)
    rates: dict[str, list[float]] = {"unpacked": [], "packed": []}
    trained = {}
    for _ in range(a.rounds):
        for name, batches in (("unpacked", plain), ("packed", packed)):
            secs, tokens = run_round(model, opt, batches, settings)
            rates[name].append(tokens / secs)
            trained[name] = tokens
    if trained["unpacked"] != trained["packed"]:
        raise SystemExit(f"trained tokens differ: {trained} (packing must keep every target)")
    ratio = statistics.median(rates["packed"]) / statistics.median(rates["unpacked"])
    print(provenance())
    print(f"{a.arch} L{a.layers} C{a.embd} V{a.vocab}, ctx_len {a.ctx}, {a.records} records "
          f"(mean {sum(len(r[0]) for r in rows) / len(rows):.0f} tokens), microbatch {a.micro}: "
          f"{len(plain)} unpacked vs {len(packed)} packed microbatches per round, "
          f"{trained['packed']} trained tokens each")
    for name in rates:
        print(f"  {name:<9} trained tokens/s median {statistics.median(rates[name]):.0f} "
              f"(rounds: {', '.join(f'{r:.0f}' for r in rates[name])})")
    print(f"packed/unpacked trained tokens/s: {ratio:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
