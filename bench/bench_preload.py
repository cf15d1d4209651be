"""Preload throughput (tokens/s) against the bare batched tokenizer, in one run.

The corpus (real English text from Debian docs, see bench/corpus.py) is cut
at line boundaries into documents of about 20 kB and written as a jsonl
file. For each tokenizer we time:

* bare: ``tokenizer.encode_batch(documents)`` in this process;
* preload: ``prepare_dataset(force=True)`` with ``num_proc`` 1 and 2: load
  the jsonl, tokenise, filter, rechunk to 4096, split and save to disk.

Each measurement is repeated ``--repeat`` times, bare and preload runs
interleaved, and the fastest of each is kept: on a shared machine the
fastest run is the one least disturbed by other jobs.

Usage: python bench/bench_preload.py [--mb 25] [--tokenizers neox,world] [--repeat 3]
(the neox tokenizer file comes from RWKV_PLUG_NEOX_TOKENIZER).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DOC_BYTES = 20_000


def split_documents(text: str, size: int = DOC_BYTES) -> list[str]:
    """Documents of about ``size`` characters, cut after a newline; nothing lost."""
    docs, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        docs.append(text[start:end])
        start = end
    return docs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=25)
    ap.add_argument("--tokenizers", default="neox,world")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    args = ap.parse_args()

    import datasets

    from corpus import get_corpus
    from rwkv_plug.data.pipeline import prepare_dataset
    from rwkv_plug.data.tokenizer import load_tokenizer

    datasets.disable_progress_bars()
    text = get_corpus(args.mb)
    docs = split_documents(text)
    print(f"corpus: {len(text.encode()) / 1e6:.1f} MB, {len(docs)} documents; machine: see docs")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.jsonl"
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        for name in args.tokenizers.split(","):
            tok = load_tokenizer(name, {})
            procs_list = [int(p) for p in args.procs.split(",")]
            bare_s, pre_s, tokens = float("inf"), dict.fromkeys(procs_list, float("inf")), 0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                ids = tok.encode_batch(docs)
                bare_s = min(bare_s, time.perf_counter() - t0)
                tokens = sum(len(x) for x in ids)
                del ids
                for procs in procs_list:
                    cfg = {"data_path": str(Path(tmp) / f"out-{name}-{procs}"), "source": str(src),
                           "tokenizer": name, "text_rechunk_force": True, "num_proc": procs}
                    t0 = time.perf_counter()
                    prepare_dataset(cfg, force=True, log=lambda _msg: None)
                    pre_s[procs] = min(pre_s[procs], time.perf_counter() - t0)
            bare = tokens / bare_s
            print(f"{name}: {tokens} tokens; bare encode_batch {bare / 1e3:,.0f}k tok/s ({bare_s:.2f} s)")
            for procs, s in pre_s.items():
                rate = tokens / s
                print(f"{name}: preload num_proc={procs}: {rate / 1e3:,.0f}k tok/s ({s:.2f} s), "
                      f"{rate / bare:.2f}x bare")

if __name__ == "__main__":
    main()
