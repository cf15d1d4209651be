"""The flat fast path (world ``encode_flat`` + text ``encode_flat`` + vectorised
filters + streaming rechunk) gives byte-identical output to the per-row path.

The per-row path is forced with a text strategy whose ``encode_flat``
declines, and, for whole builds, with the process pool (``datasets.map``).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rwkv_plug.builtin_strategies.pieces import flat_encode
from rwkv_plug.builtin_strategies.text import TextStrategy
from rwkv_plug.data.encode import Encoder
from rwkv_plug.data.tokenizer import load_tokenizer

from conftest import random_texts as texts



pytestmark = pytest.mark.usefixtures("offline_data")



def world():
    return load_tokenizer("world", {})


class PerRow(TextStrategy):
    """The text strategy with the fast path declined: the generic per-row path."""

    def encode_flat(self, rows):
        return None


def base_cfg(**over) -> dict:
    cfg = {"tokenizer": "world", "data_prefix_skip_mask": 0, "min_token_size": -1, "max_token_size": -1}
    cfg.update(over)
    return cfg


def test_world_encode_flat_matches_encode_batch():
    tok = world()
    batch = texts(1, 300, 400) + ["", "x" * 100_000]  # the big one makes it use threads
    want = tok.encode_batch(batch)
    ids, offsets = tok.encode_flat(batch)
    assert ids.dtype == np.int32 and offsets.dtype == np.int64 and len(offsets) == len(batch) + 1
    assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(batch))] == want


def test_python_fallback_and_generic_tokenizers_flatten_the_same():
    from rwkv_plug.builtin_tokenizers.world import _PyTrie

    tok = world()
    batch = texts(2, 50)
    slow = _PyTrie(tok._tokens)
    ids, offsets = (np.frombuffer(b, dt) for b, dt in zip(slow.encode_flat(batch), (np.int32, np.int64)))
    fast_ids, fast_offsets = tok.encode_flat(batch)
    assert ids.tobytes() == fast_ids.tobytes() and offsets.tobytes() == fast_offsets.tobytes()

    class ListsOnly:  # a third-party tokenizer with no encode_flat
        def encode_batch(self, items):
            return tok.encode_batch(items)

    ids, offsets = flat_encode(ListsOnly(), batch)
    assert ids.tobytes() == fast_ids.tobytes() and offsets.tobytes() == fast_offsets.tobytes()


@pytest.mark.parametrize("rechunking", [False, True], ids=["samples", "rechunked"])
@pytest.mark.parametrize("over", [
    {},
    {"data_prefix_skip_mask": 3},
    {"data_prefix_skip_mask": 1},  # two-token documents keep exactly one target
    {"min_token_size": 4, "max_token_size": 30},
    {"data_prefix_skip_mask": 50, "max_token_size": 60},
])
def test_encoder_flat_table_equals_per_row_table(over, rechunking):
    tok = world()
    column = texts(3, 200) + ["a", "", "中"]  # one-token, empty (bad) and multi-byte rows
    column[17] = None  # bad: None
    column[40] = 12  # bad: not text
    batch = {"text": column, "other": list(range(len(column)))}
    indices = list(range(100, 100 + len(column)))
    cfg = base_cfg(**over)
    fast = Encoder(TextStrategy, cfg, tok, row_offset=7, rechunking=rechunking)
    slow = Encoder(PerRow, cfg, tok, row_offset=7, rechunking=rechunking)
    assert fast.flat and fast.strategy.encode_flat([{"text": "a"}]) is not None
    got, want = fast(batch, indices), slow(batch, indices)
    assert got.schema.equals(want.schema)
    assert got.equals(want), "the flat table differs from the per-row one"
    drops = set(want.column("_drop").to_pylist())
    assert "column 'text' is None" in drops and "column 'text' is empty" in drops


def test_subclasses_that_change_rows_keep_their_behaviour():
    class Upper(TextStrategy):
        def pieces(self, row):
            return [(row["text"].upper(), True)]

    assert Upper(base_cfg(), world()).encode_flat([{"text": "a"}]) is None


def _build(tmp_path, name: str, rows: list[dict], **data) -> dict[str, pa.Table]:
    from rwkv_plug.data.pipeline import prepare_dataset

    src = tmp_path / "src.jsonl"
    if not src.exists():
        src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = {"data_path": str(tmp_path / name), "source": str(src), "tokenizer": "world", **data}
    dd, _ = prepare_dataset(cfg, force=True, log=lambda _m: None)
    return {split: dd[split].with_format("arrow")[:] for split in ("train", "test")}


@pytest.mark.parametrize("data", [
    {"text_rechunk_force": True, "text_rechunk_size": 512, "data_prefix_skip_mask": 2},
    {"min_token_size": 3, "test_split": 5, "test_split_shuffle": True},
])
def test_whole_build_matches_the_process_pool_per_row_path(tmp_path, monkeypatch, data):
    from rwkv_plug.data import pipeline

    rows = [{"text": t} for t in texts(4, 3000, 120)]  # > 1 MB of source, so a pool may run
    rows[5] = {"text": None}
    import datasets

    monkeypatch.setattr(world(), "threads", 2)  # as on any machine with 2+ cores
    maps = []
    real_map = datasets.Dataset.map
    monkeypatch.setattr(datasets.Dataset, "map", lambda self, *a, **k: maps.append(k) or real_map(self, *a, **k))
    fast = _build(tmp_path, "fast", rows, num_proc=2, **data)
    assert maps == []  # the world tokenizer's threads, in this process
    monkeypatch.setattr(pipeline, "in_process", lambda *_a: False)
    monkeypatch.setattr(pipeline, "SMALL_BYTES", 0)
    monkeypatch.setattr(TextStrategy, "encode_flat", PerRow.encode_flat)
    slow = _build(tmp_path, "slow", rows, num_proc=2, **data)
    assert [k["num_proc"] for k in maps] == [2]  # the per-row path, in a pool of 2
    for split in ("train", "test"):
        assert fast[split].num_rows > 0
        assert fast[split].equals(slow[split]), f"{split} differs"


def test_rechunk_with_prefix_skip_against_a_computed_stream(tmp_path):
    tok = world()
    rows = [{"text": t} for t in texts(5, 400, 80)]
    got = _build(tmp_path, "out", rows, text_rechunk_force=True, text_rechunk_size=256,
                 data_prefix_skip_mask=2, test_split=3)
    sep = tok.encode("\n")
    ids: list[int] = []
    mask: list[int] = []
    for r in rows:
        doc = tok.encode(r["text"])
        if len(doc) <= 2:  # empty, 1 token, or nothing learned after the 2 skipped
            continue
        ids += doc + sep
        mask += [0, 0] + [1] * (len(doc) - 2) + [1] * len(sep)
    n = len(ids) // 256
    for k in range(n):
        mask[k * 256:k * 256 + 2] = [0, 0]  # each chunk's first tokens are skipped too
    table = pa.concat_tables([got["train"], got["test"]])
    assert table.num_rows == n and got["test"].num_rows == 3
    assert pc.list_flatten(table.column("input_ids")).to_pylist() == ids[:n * 256]
    assert pc.list_flatten(table.column("loss_mask")).to_pylist() == mask[:n * 256]


@pytest.mark.parametrize("num_proc", [1, 2, 3])
def test_num_proc_is_the_world_tokenizers_thread_count(tmp_path, monkeypatch, num_proc):
    """As on a machine of 8 cores: num_proc, not the core count, sets the threads that tokenise."""
    from rwkv_plug.builtin_tokenizers.world import WorldTokenizer

    monkeypatch.setattr(world(), "threads", 8)  # the shared, loaded tokenizer's default
    seen = []
    for method in ("encode_spans", "encode_flat"):
        real = getattr(WorldTokenizer, method)
        monkeypatch.setattr(WorldTokenizer, method, lambda self, *a, threads=None, _real=real:
                            seen.append(threads or self.threads) or _real(self, *a, threads=threads))
    rows = [{"text": t} for t in texts(6, 400, 60)]
    got = _build(tmp_path, "out", rows, num_proc=num_proc, test_split=3)
    assert got["train"].num_rows > 300
    assert seen and set(seen) == {num_proc}
    assert world().threads == 8  # the loaded tokenizer is not changed for everyone


def test_worker_processes_tokenise_on_one_thread_each(monkeypatch):
    import pickle

    monkeypatch.setattr(world(), "threads", 8)
    enc = Encoder(TextStrategy, base_cfg(), world(), threads=2)
    assert enc.tokenizer.threads == 2 and world().threads == 8
    enc.threads = 1  # what the pipeline sets before handing it to datasets.map's workers
    worker = pickle.loads(pickle.dumps(enc))
    assert worker.tokenizer.threads == 1
