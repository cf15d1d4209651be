"""Preload throughput (tokens/s) against the bare batched tokenizer, in one run.

The corpus (real English text from Debian docs, see bench/corpus.py) is cut
at line boundaries into documents of about 20 kB and written as a jsonl
file. For each tokenizer we time:

* bare: ``tokenizer.encode_batch(documents)`` in this process; a tokenizer
  with a ``threads`` setting (world) is timed once per ``--procs`` value, on
  that many threads, as preload's ``num_proc`` runs it; others (neox: Rust
  threads on every core) once;
* preload: ``prepare_dataset(force=True, load=False)`` with ``num_proc`` 1 and 2, as
  ``rwkv-plug preload`` calls it: load the jsonl, tokenise, filter, rechunk to 4096,
  split and save to disk (the saved dataset is not opened afterwards).

Each measurement is repeated ``--repeat`` times after one warm-up round,
bare and preload runs interleaved. The ratio is given for the fastest run of each (the one least
disturbed by other jobs) and for the median runs: on a shared machine a
short run (bare) finds a quiet moment more often than a longer one, so the
fastest-run ratio leans low and the median ratio is the steadier of the two.

The CPU time of the process (all its threads) is given too, as a ratio
bare / preload: it counts the work preload adds (parsing the source, writing
the splits, the summary) whether or not it overlaps tokenising, and it moves
far less than wall-clock time when other jobs share the machine.

``--also-load-dataset`` adds preload runs with the direct reader turned off
(the source read through ``datasets.load_dataset``, as before), in the same run.
``--also-unstreamed`` adds preload runs that parse the whole source before
tokenising (data/streamed.py turned off), in the same run: the gain of
tokenising while parsing.
``--also-pyarrow-json`` adds preload runs with the native one-string-column JSON Lines
reader (data/_jsonl.c) turned off, every batch parsed by pyarrow's reader, in the same
run: the gain of that reader.
``--also-loaded`` adds preload runs that also open the saved dataset, as ``fit`` and
``inspect`` call ``prepare_dataset``, in the same run: what opening it costs.
``--also-copied`` adds preload runs whose save copies the train split (as
``save_to_disk`` does) instead of moving the file the rechunker wrote while
tokenising (data/in_place.py), in the same run: the gain of the move.
``--stages`` adds one timed run per ``num_proc`` (after the others) that prints when
each stage ran, on which thread, and its thread CPU time (bench/stages.py): where
the serial parts are.

Usage: python bench/bench_preload.py [--mb 25] [--tokenizers neox,world] [--repeat 5] [--stages]
       [--also-loaded] [--also-copied] [--also-unstreamed] [--also-load-dataset] [--also-pyarrow-json]
       python bench/bench_preload.py --quick    (2 MB, world, 1 run: checks that it runs)
(the neox tokenizer file comes from RWKV_PLUG_NEOX_TOKENIZER).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    ap.add_argument("--repeat", type=int, default=5, help="runs of each; the fastest counts")
    ap.add_argument("--also-load-dataset", action="store_true",
                    help="also time preload with the source read by datasets.load_dataset")
    ap.add_argument("--also-unstreamed", action="store_true",
                    help="also time preload with parsing and tokenising one after the other")
    ap.add_argument("--also-loaded", action="store_true",
                    help="also time preload with the saved dataset opened afterwards (as fit does)")
    ap.add_argument("--also-copied", action="store_true",
                    help="also time preload with the train split copied by the save, not moved")
    ap.add_argument("--also-pyarrow-json", action="store_true",
                    help="also time preload with every JSON batch parsed by pyarrow's reader")
    ap.add_argument("--stages", action="store_true", help="print a per-stage timeline of one more run")
    ap.add_argument("--quick", action="store_true", help="2 MB, world only, 1 run")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.tokenizers, args.repeat = 2, "world", 1

    import datasets

    from corpus import get_corpus
    from rwkv_plug.data import direct, streamed
    from rwkv_plug.data.pipeline import prepare_dataset
    from rwkv_plug.data.tokenizer import load_tokenizer

    datasets.disable_progress_bars()
    limit = direct.DIRECT_LIMIT
    text = get_corpus(args.mb)
    docs = split_documents(text)
    print(f"corpus: {len(text.encode()) / 1e6:.1f} MB, {len(docs)} documents; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.jsonl"
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        for name in args.tokenizers.split(","):
            tok = load_tokenizer(name, {})
            procs_list = [int(p) for p in args.procs.split(",")]
            # (num_proc, how): "" as it is, "load_dataset" without the direct reader,
            # "unstreamed" parsing the whole source before tokenising
            runs = [(p, "") for p in procs_list]
            if args.also_load_dataset:
                runs += [(p, "load_dataset") for p in procs_list]
            if args.also_unstreamed:
                runs += [(p, "unstreamed") for p in procs_list]
            if args.also_copied:
                runs += [(p, "copied") for p in procs_list]
            if args.also_loaded:
                runs += [(p, "loaded") for p in procs_list]
            if args.also_pyarrow_json:
                runs += [(p, "pyarrow_json") for p in procs_list]
            # bare on the threads preload's num_proc gives it (world), or as it comes (0)
            threaded = tok.threads is not None
            bare_s: dict[int, list[float]] = {p: [] for p in (procs_list if threaded else [0])}
            pre_s: dict[tuple[int, str], list[float]] = {run: [] for run in runs}
            bare_cpu: dict[int, list[float]] = {p: [] for p in bare_s}
            pre_cpu: dict[tuple[int, str], list[float]] = {run: [] for run in runs}
            tokens = 0
            for i in range(args.repeat + 1):  # round 0 warms up (imports, caches) and is not counted
                for threads, times in bare_s.items():
                    bare_tok = tok.with_threads(threads) if threads else tok
                    c0, t0 = time.process_time(), time.perf_counter()
                    ids = bare_tok.encode_batch(docs)
                    if i:
                        times.append(time.perf_counter() - t0)
                        bare_cpu[threads].append(time.process_time() - c0)
                    tokens = sum(len(x) for x in ids)
                    del ids
                for procs, how in runs:
                    cfg = {"data_path": str(Path(tmp) / f"out-{name}-{procs}"), "source": str(src),
                           "tokenizer": name, "text_rechunk_force": True, "num_proc": procs}
                    direct.DIRECT_LIMIT = -1 if how == "load_dataset" else limit  # -1: every source falls back
                    streamed.ENABLED = how in ("", "copied", "loaded", "pyarrow_json")
                    native_json = direct._one_string_column
                    if how == "pyarrow_json":
                        direct._one_string_column = lambda _batch: None
                    if how == "copied":  # every split saved by save_to_disk
                        from rwkv_plug.data import in_place

                        moves = in_place.save_splits
                        in_place.save_splits = lambda dd, folder, _files=None: moves(dd, folder, {})
                    c0, t0 = time.process_time(), time.perf_counter()
                    try:
                        prepare_dataset(cfg, force=True, log=lambda _msg: None, load=how == "loaded")
                    finally:
                        direct.DIRECT_LIMIT, streamed.ENABLED = limit, True
                        direct._one_string_column = native_json
                        if how == "copied":
                            in_place.save_splits = moves
                    if i:
                        pre_s[procs, how].append(time.perf_counter() - t0)
                        pre_cpu[procs, how].append(time.process_time() - c0)
            for threads, times in bare_s.items():
                fast, med = min(times), statistics.median(times)
                on = f" on {threads} thread{'s' if threads > 1 else ''}" if threads else ""
                print(f"{name}: {tokens} tokens; bare encode_batch{on} {tokens / fast / 1e3:,.0f}k tok/s "
                      f"(fastest {fast:.3f} s, median {med:.3f} s)")
            for (procs, how), times in pre_s.items():
                bare = bare_s[procs if threaded else 0]
                fast, med = min(bare), statistics.median(bare)
                cpu = statistics.median(bare_cpu[procs if threaded else 0]) / statistics.median(pre_cpu[procs, how])
                label = {"": "", "load_dataset": " (source via load_dataset)",
                         "unstreamed": " (parse, then tokenise)", "copied": " (train split copied)",
                         "loaded": " (result opened)", "pyarrow_json": " (JSON parsed by pyarrow)"}[how]
                p_fast, p_med = min(times), statistics.median(times)
                print(f"{name}: preload num_proc={procs}{label}: {tokens / p_fast / 1e3:,.0f}k tok/s "
                      f"(fastest {p_fast:.3f} s, median {p_med:.3f} s), {fast / p_fast:.2f}x bare "
                      f"(fastest runs), {med / p_med:.2f}x (medians), CPU time {cpu:.2f}x (medians)")
            if args.stages:
                from stages import timeline

                for procs in procs_list:
                    cfg = {"data_path": str(Path(tmp) / f"out-{name}-{procs}"), "source": str(src),
                           "tokenizer": name, "text_rechunk_force": True, "num_proc": procs}
                    print(f"{name}: stages of one preload, num_proc={procs} (ms from its start)")
                    for line in timeline(lambda: prepare_dataset(cfg, force=True, log=lambda _msg: None,
                                                                 load=False)):
                        print("  " + line)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
