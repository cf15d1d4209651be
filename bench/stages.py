"""A per-stage timeline of one preload (``bench_preload.py --stages``).

The stages' functions are wrapped for the one call: each call's start and end (ms from
the start of the run), its thread and its thread CPU time are recorded, then printed
per stage: first start, last end, the wall time the calls spanned and their CPU time.
Threads the tokenizer starts in C are not in the CPU column (their caller's wall span is).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: (module, attribute, stage): a function or ``Class.method`` to time.
STAGES = [
    ("rwkv_plug.data.direct", "_parse_json_batch", "parse a JSON batch"),
    ("rwkv_plug.data.encode", "Encoder.call_arrow", "tokenise a batch"),
    ("rwkv_plug.data.in_process", "ChunkOutput.feed", "rechunk (+ write) a batch"),
    ("rwkv_plug.data.in_process", "ChunkOutput.finish", "finish the rechunked split"),
    ("rwkv_plug.data.pipeline", "_arrange", "cut the test split"),
    ("rwkv_plug.data.in_place", "save_splits", "save the splits"),
    ("rwkv_plug.data.pipeline", "finish_summary", "split statistics"),
    ("rwkv_plug.data.store", "write_meta", "write the record"),
    ("rwkv_plug.data.store", "publish", "publish"),
    ("datasets", "load_from_disk", "load the result"),
]


def _patch(events: list, t0: list[float]) -> list[tuple[Any, str, Any]]:
    import importlib

    undo = []
    for module, attr, stage in STAGES:
        owner: Any = importlib.import_module(module)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        real = owner.__dict__[name]

        def timed(*args, _real=real, _stage=stage, **kwargs):
            s, c = time.perf_counter(), time.thread_time()
            try:
                return _real(*args, **kwargs)
            finally:
                events.append((_stage, threading.current_thread().name, s - t0[0],
                               time.perf_counter() - t0[0], time.thread_time() - c))

        setattr(owner, name, timed)
        undo.append((owner, name, real))
    return undo


def timeline(run: Callable[[], Any]) -> list[str]:
    """Lines describing the stages of ``run()`` (one preload)."""
    events: list = []
    t0 = [0.0]
    undo = _patch(events, t0)
    try:
        t0[0] = time.perf_counter()
        run()
        total = time.perf_counter() - t0[0]
    finally:
        for owner, name, real in undo:
            setattr(owner, name, real)
    out = [f"{'stage':28s} {'calls':>5s} {'first':>8s} {'last end':>8s} {'wall':>8s} {'cpu':>8s}  threads"]
    for stage in dict.fromkeys(e[0] for e in sorted(events, key=lambda e: e[2])):
        mine = [e for e in events if e[0] == stage]
        wall = sum(e[3] - e[2] for e in mine)
        threads = ", ".join(sorted({e[1] for e in mine}))
        cpu = sum(e[4] for e in mine)
        out.append(f"{stage:28s} {len(mine):5d} {min(e[2] for e in mine) * 1e3:8.1f} "
                   f"{max(e[3] for e in mine) * 1e3:8.1f} {wall * 1e3:8.1f} {cpu * 1e3:8.1f}  {threads}")
    out.append(f"{'whole preload':28s} {'':5s} {0.0:8.1f} {total * 1e3:8.1f}")
    return out
