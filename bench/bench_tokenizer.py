"""World tokenizer speed against the reference tokenizers; bare neox speed.

On ``--mb`` MB (default 10) of real English text (bench/corpus.py), split
into paragraphs, measures in one run:

* rwkv-plug ``world``: ``encode`` per paragraph, and ``encode_batch`` with 1
  and 2 threads;
* ``pyrwkv_tokenizer`` (Rust): ``encode`` per paragraph and ``encode_batch``;
* the ``rwkv`` package's ``TRIE_TOKENIZER`` (pure Python), per paragraph;
* the bare GPT-NeoX ``tokenizers`` ``encode_batch`` with 1 and 2 threads
  (each in a fresh process, as rayon reads its thread count once).

Every tokenizer's world ids are checked identical to ours. Timings are the
best of ``--repeat`` runs (the machine is shared). Prints a markdown table
with MB/s, tokens/s and ratios against pyrwkv_tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import get_corpus  # noqa: E402


def best_time(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def paragraphs(text: str) -> list[str]:
    # Keep every byte (the separator stays on the paragraph) so the totals match the corpus.
    parts = text.split("\n\n")
    return [p + "\n\n" for p in parts[:-1]] + [parts[-1]]


def neox_worker(mb: int, repeat: int) -> None:
    """Runs in a child with RAYON_NUM_THREADS set; prints one JSON line."""
    from tokenizers import Tokenizer

    from rwkv_plug.builtin_tokenizers.neox import find_neox_file
    from rwkv_plug.core.env import settings

    tok = Tokenizer.from_file(str(find_neox_file(settings().neox_tokenizer)))
    docs = paragraphs(get_corpus(mb))
    seconds, enc = best_time(lambda: tok.encode_batch(docs, add_special_tokens=False), repeat)
    print(json.dumps({"seconds": seconds, "tokens": sum(len(e.ids) for e in enc)}))


def run_neox(mb: int, repeat: int, threads: int) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    out = subprocess.run([sys.executable, __file__, "--mb", str(mb), "--repeat", str(repeat), "--neox-worker"],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--neox-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.neox_worker:
        neox_worker(args.mb, args.repeat)
        return

    import pyrwkv_tokenizer
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    from rwkv_plug.builtin_tokenizers.world import WorldTokenizer, find_vocab

    text = get_corpus(args.mb)
    docs = paragraphs(text)
    mb = len(text.encode("utf-8")) / 1e6
    vocab = find_vocab()
    # The reference tokenizers have no id 0, so compare with our EOT-less variant
    # (identical unless the text holds the literal <|endoftext|>).
    ours = WorldTokenizer(vocab, add_endoftext=False, threads=1)
    if not ours.native:
        print("warning: the native world tokenizer is not built; timing the fallback", file=sys.stderr)
    rust = pyrwkv_tokenizer.RWKVTokenizer(vocab_filepath=str(vocab))

    rows: list[tuple[str, float, int]] = []

    def measure(label: str, fn, repeat: int = args.repeat) -> None:
        seconds, ids = best_time(fn, repeat)
        if ids != expected:
            raise SystemExit(f"{label}: ids differ from rwkv-plug world")
        rows.append((label, seconds, sum(len(i) for i in ids)))

    expected = [ours.encode(d) for d in docs]
    measure("rwkv-plug world, encode per paragraph", lambda: [ours.encode(d) for d in docs])
    measure("rwkv-plug world, encode_batch 1 thread", lambda: ours.encode_batch(docs))
    ours2 = WorldTokenizer(vocab, add_endoftext=False, threads=2)
    measure("rwkv-plug world, encode_batch 2 threads", lambda: ours2.encode_batch(docs))
    measure("pyrwkv_tokenizer, encode per paragraph", lambda: [rust.encode(d) for d in docs])
    measure("pyrwkv_tokenizer, encode_batch", lambda: rust.encode_batch(docs))
    start = time.perf_counter()
    ref = TRIE_TOKENIZER(str(vocab))
    print(f"(rwkv TRIE_TOKENIZER load: {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    measure("rwkv TRIE_TOKENIZER (reference), encode per paragraph", lambda: [ref.encode(d) for d in docs], 1)

    by_label = {label: seconds for label, seconds, _ in rows}
    base = by_label["pyrwkv_tokenizer, encode per paragraph"]
    base_batch = by_label["pyrwkv_tokenizer, encode_batch"]
    print(f"\nWorld tokenizer on {mb:.1f} MB ({len(docs)} paragraphs); ids identical across all rows.\n")
    print("| tokenizer | MB/s | tokens/s | vs pyrwkv encode | vs pyrwkv encode_batch |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds, tokens in rows:
        print(f"| {label} | {mb / seconds:.1f} | {tokens / seconds / 1e6:.2f}M | "
              f"{base / seconds:.2f}x | {base_batch / seconds:.2f}x |")

    print(f"\nBare GPT-NeoX `tokenizers` encode_batch on the same {mb:.1f} MB:\n")
    print("| threads | MB/s | tokens/s |")
    print("|---:|---:|---:|")
    for threads in (1, 2):
        res = run_neox(args.mb, args.repeat, threads)
        print(f"| {threads} | {mb / res['seconds']:.2f} | {res['tokens'] / res['seconds'] / 1e3:.0f}k |")


if __name__ == "__main__":
    main()
