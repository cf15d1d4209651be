"""The messages strategy's encoding speed against the bare batched tokenizer, in one run.

Each document of real English text (bench/corpus.py, or local files with
``--files``) is cut into a conversation: a system prompt, then user and
assistant messages of about ``--message-chars`` characters in turn. Timed:

* bare: ``tokenizer.encode_batch`` of each conversation rendered as one
  string in the RWKV layout (``System: ...\\n\\nUser: ...\\n\\nAssistant: ...``),
  the same text the strategy produces;
* strategy: the strategy on the rows (checks every message, tokenises
  each message's content on its own, builds the masks).

The strategy's fast paths' output is first checked against ``encode_batch``'s.
Up to three pairs, the bare side always given its rendered strings built
before timing:

* ``arrow``, the path preload uses when the tokenizer reads Arrow bytes
  (``reads_spans``, e.g. world): ``MessagesStrategy.encode_arrow`` of a
  pyarrow table of the rows (built before timing, as preload gets its
  batches from the dataset's Arrow table) vs the tokenizer's ``encode_flat``
  of the rendered strings. Timed on the strategy side: reading and checking
  the messages column, rendering every message (label, space, content, end
  of turn) into one buffer with pyarrow, the tokenizer's ``encode_spans`` of
  its label, content and end-of-turn spans, and the numpy masks and offsets.
  With ``--json-messages`` each message is a JSON text in the table (the
  ``arrow.json`` type ``datasets`` stores when messages' keys differ), so the
  strategy's time includes parsing them with pyarrow's JSON reader;
* ``flat``, the path preload uses otherwise (``MessagesStrategy.encode_flat``
  of the rows as Python dicts vs the tokenizer's ``encode_flat``: numpy
  arrays, no Python int per token);
* ``lists`` (``encode_batch`` vs ``encode_batch``).

The ratio is bare time / strategy time (target >= 0.8x on the path preload
uses: ``arrow`` where it is printed, else ``flat``), in
wall-clock time (the target) and in CPU time of the process (all its
threads: steadier on a shared machine, and a floor for the wall ratio, since
the strategy overlaps its Python work with the tokenizer's threads). The
best of ``--repeat`` runs of each is kept, the runs of a pair interleaved.
Usage: python bench/bench_messages.py [--mb 10] [--tokenizers world,neox]
       python bench/bench_messages.py --quick     (1 MB, world, 2 runs: checks that it runs)
       python bench/bench_messages.py --files 'docs/*.md' --tokenizers world   (local text)
       python bench/bench_messages.py --json-messages       (the arrow pair on messages stored as JSON text)
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def best_times(fns: list[Callable[[], object]], repeat: int) -> list[tuple[float, float]]:
    """The best (wall, CPU) time of each function, the runs interleaved so a change in load hits all alike."""
    best = [(float("inf"), float("inf"))] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            best[i] = (min(best[i][0], wall), min(best[i][1], cpu))
    return best


def conversation(doc: str, message_chars: int) -> dict:
    """An OpenAI-style row: a system prompt, then user/assistant pieces of ``doc`` in turn."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for i, start in enumerate(range(0, len(doc), message_chars)):
        messages.append({"role": ("user", "assistant")[i % 2], "content": doc[start:start + message_chars]})
    if messages[-1]["role"] != "assistant":
        messages.append({"role": "assistant", "content": "Noted."})
    return {"messages": messages}


def json_table(rows: list[dict]):
    """The rows as a table whose messages are JSON texts (``arrow.json``), as ``datasets`` stores them."""
    import json

    import pyarrow as pa

    lists = pa.array([[json.dumps(m) for m in r["messages"]] for r in rows], pa.list_(pa.string()))
    return pa.table({"messages": pa.ListArray.from_arrays(
        lists.offsets, pa.ExtensionArray.from_storage(pa.json_(), lists.values))})


def rwkv_text(row: dict) -> str:
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "".join(f"{names[m['role']]}: {m['content']}\n\n" for m in row["messages"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--files", default="", help="a glob of local text files to use instead of the corpus")
    ap.add_argument("--tokenizers", default="world,neox")
    ap.add_argument("--message-chars", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 MB, world only, 2 runs")
    ap.add_argument("--json-messages", action="store_true",
                    help="the arrow pair's table holds each message as JSON text (datasets' Json feature)")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.tokenizers, args.repeat = 1, "world", 2

    import numpy as np
    import pyarrow as pa
    from bench_preload import split_documents

    from rwkv_plug.builtin_strategies.messages import MessagesStrategy
    from rwkv_plug.core.config import Problems
    from rwkv_plug.core.interfaces import FlatSamples
    from rwkv_plug.data.options import resolve_data_config
    from rwkv_plug.data.tokenizer import load_tokenizer

    if args.files:
        text = "".join(Path(p).read_text(encoding="utf-8", errors="replace") for p in sorted(glob.glob(args.files)))
        source = args.files
    else:
        from corpus import get_corpus

        text, source = get_corpus(args.mb), f"corpus {args.mb} MB"
    rows = [conversation(d, args.message_chars) for d in split_documents(text) if d.strip()]
    rendered = [rwkv_text(r) for r in rows]
    n_messages = sum(len(r["messages"]) for r in rows)
    print(f"{source}: {len(rows)} conversations, {n_messages} messages")
    for name in args.tokenizers.split(","):
        problems = Problems("bench")
        opts = resolve_data_config({"source": "x.jsonl", "data_path": "x", "tokenizer": name}, problems)
        problems.raise_if_any()
        tok = load_tokenizer(name, opts)
        strategy = MessagesStrategy(opts, tok)
        samples = strategy.encode_batch(rows)
        bad = [s for s in samples if isinstance(s, Exception)]
        if bad:
            raise SystemExit(f"{len(bad)} rows skipped, e.g. {bad[0]}: the benchmark's rows must all encode")
        n_tokens = sum(len(s) for s in samples)
        want = FlatSamples.from_samples(samples)
        # the pipeline's choice (data/encode.py, Encoder.arrow): Arrow tables when the tokenizer reads them
        arrow = "arrow" in strategy.fast_paths() and tok.reads_spans
        table = (json_table(rows) if args.json_messages else pa.Table.from_pylist(rows)) if arrow else None
        fields = ("ids", "offsets", "mask")
        checked = {"flat": strategy.encode_flat(rows)}
        if arrow:
            checked["arrow"] = strategy.encode_arrow(table)
        for path, got in checked.items():
            if got is None or not all(np.array_equal(getattr(got, k), getattr(want, k)) for k in fields):
                raise SystemExit(f"{name}: the {path} path does not give encode_batch's samples: not timed")
        del samples, want, checked
        pairs = [("flat", lambda: tok.encode_flat(rendered), lambda: strategy.encode_flat(rows)),
                 ("lists", lambda: tok.encode_batch(rendered), lambda: strategy.encode_batch(rows))]
        if arrow:
            pairs.insert(0, ("arrow", lambda: tok.encode_flat(rendered), lambda: strategy.encode_arrow(table)))
        for path, bare, strat in pairs:
            (t_bare, c_bare), (t_strat, c_strat) = best_times([bare, strat], args.repeat)
            print(f"{name:5s} messages {path:5s}  bare {n_tokens / t_bare / 1e6:6.2f}M tok/s  "
                  f"strategy {n_tokens / t_strat / 1e6:6.2f}M tok/s  ratio {t_bare / t_strat:.2f}x "
                  f"(CPU time {c_bare / c_strat:.2f}x)")


if __name__ == "__main__":
    main()
