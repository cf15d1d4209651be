"""Strategy encoding speed against the bare batched tokenizer, in one run.

For each tokenizer, on documents of real English text (bench/corpus.py):

* text: ``TextStrategy.encode_batch(rows)`` vs ``tokenizer.encode_batch(docs)``;
* multi_column: each document cut into instruction/input/output cells,
  ``MultiColumnStrategy.encode_batch(rows)`` vs ``tokenizer.encode_batch``
  of the same cells (the strategy also adds prefixes and separators).

The best of ``--repeat`` runs is kept, since the machine is shared.
Usage: python bench/bench_strategies.py [--mb 10] [--tokenizers world,neox]
(the neox tokenizer file comes from RWKV_PLUG_NEOX_TOKENIZER).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def best_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--tokenizers", default="world,neox")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from bench_preload import split_documents
    from corpus import get_corpus

    from rwkv_plug.builtin_strategies.multi_column import MultiColumnStrategy
    from rwkv_plug.builtin_strategies.text import TextStrategy
    from rwkv_plug.data.tokenizer import load_tokenizer

    docs = split_documents(get_corpus(args.mb))
    text_rows = [{"text": d} for d in docs]
    cells = [(d[:200], d[200:2000], d[2000:]) for d in docs]
    mc_rows = [dict(zip(("instruction", "input", "output"), c)) for c in cells]
    flat_cells = [c for row in cells for c in row]
    print(f"corpus: {args.mb} MB, {len(docs)} documents")
    for name in args.tokenizers.split(","):
        tok = load_tokenizer(name, {})
        n_tokens = sum(len(ids) for ids in tok.encode_batch(docs))
        cases = [
            ("text", lambda: tok.encode_batch(docs), lambda: TextStrategy({}, tok).encode_batch(text_rows)),
            (
                "multi_column",
                lambda: tok.encode_batch(flat_cells),
                lambda: MultiColumnStrategy({}, tok).encode_batch(mc_rows),
            ),
        ]
        for case, bare, strategy in cases:
            t_bare = best_time(bare, args.repeat)
            t_strat = best_time(strategy, args.repeat)
            print(
                f"{name:5s} {case:13s} bare {n_tokens / t_bare / 1e6:6.2f}M tok/s  "
                f"strategy {n_tokens / t_strat / 1e6:6.2f}M tok/s  ratio {t_bare / t_strat:.2f}x"
            )


if __name__ == "__main__":
    main()
