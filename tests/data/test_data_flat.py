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
from rwkv_plug.core.interfaces import Tokenizer
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

    class ListsOnly(Tokenizer):  # a third-party tokenizer: the fast paths' defaults
        name, vocab_size = "lists", 65536
        load = decode = fingerprint = None

        def encode(self, text):
            return tok.encode(text)

    lists = ListsOnly()
    assert lists.threads is None and not lists.reads_spans and lists.with_threads(4) is lists
    ids, offsets = flat_encode(lists, batch)
    assert ids.tobytes() == fast_ids.tobytes() and offsets.tobytes() == fast_offsets.tobytes()
    raw = [t.encode() for t in batch]
    lens = np.array([len(r) for r in raw], dtype=np.int64)
    ids, offsets = lists.encode_spans(b"".join(raw), np.cumsum(lens) - lens, lens)
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


class _FastPathFails(TextStrategy):
    """The text strategy whose fast paths raise (a plugin's bug): the slow path must take over."""

    name = "fast_path_fails"  # its own name: the warning is said once per strategy and path

    def encode_flat(self, rows):
        raise KeyError("boom")

    def encode_arrow(self, table):
        raise ValueError("bad buffer")


def test_a_failing_fast_path_is_said_once_and_the_slow_path_gives_the_same_table(capsys):
    tok = world()
    column = texts(7, 50) + [None, ""]
    batch, indices = {"text": column}, list(range(len(column)))
    want = Encoder(PerRow, base_cfg(), tok)(batch, indices)
    enc = Encoder(_FastPathFails, base_cfg(), tok)
    assert enc.flat and enc.arrow  # declared, as the text strategy declares them
    assert enc(batch, indices).equals(want) and enc(batch, indices).equals(want)
    table = pa.table({"text": pa.array(column, pa.string())})
    assert enc.call_arrow(table, indices, lambda: batch).equals(want)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: strategy 'fast_path_fails': encode_flat failed (KeyError: 'boom'); encoded with "
        "encode_batch instead (same samples, slower)",
        "warning: strategy 'fast_path_fails': encode_arrow failed (ValueError: bad buffer); encoded with "
        "encode_flat instead (same samples, slower)",
    ]


def test_fast_paths_are_declared_and_a_strategy_without_them_never_gets_called_on_them():
    from rwkv_plug.core.errors import DataError
    from rwkv_plug.core.interfaces import BadRow, FlatSamples, Sample, Strategy

    class Plain(Strategy):  # a third-party strategy: no fast path declared
        name = "plain"

        def encode(self, row):
            return Sample([1, 2, 3], [0, 1, 1])

        def encode_flat(self, rows):  # not declared in fast_paths(): never called
            raise AssertionError("called")

    enc = Encoder(Plain, base_cfg(), world())
    assert not enc.flat and not enc.arrow and enc.strategy.fast_paths() == frozenset()
    assert enc({"x": [1, 2]}, [0, 1]).column("input_ids").to_pylist() == [[1, 2, 3], [1, 2, 3]]

    class WrongType(Plain):
        name = "wrong_type"

        def fast_paths(self):
            return frozenset({"flat"})

        def encode_flat(self, rows):
            return [Sample([1, 2], [1, 1])] * len(rows)

    with pytest.raises(DataError, match="strategy 'wrong_type': its fast path returned list, not a FlatSamples"):
        Encoder(WrongType, base_cfg(), world())({"x": [1]}, [0])
    # the world tokenizer reads Arrow bytes itself; a tokenizer on the defaults does not
    assert world().reads_spans and world().threads is not None
    flat = FlatSamples.from_samples([Sample([5, 6], [0, 1]), BadRow("no"), Sample([7], [1])])
    assert flat.ids.tolist() == [5, 6, 7] and flat.offsets.tolist() == [0, 2, 2, 3]
    assert flat.mask.tolist() == [0, 1, 1] and list(flat.bad) == [1]


def test_a_failing_encode_batch_is_said_once_when_row_by_row_works(capsys):
    class BatchFails(PerRow):
        name = "batch_fails"

        def encode_batch(self, rows):
            raise RuntimeError("batch bug")

    tok = world()
    column = texts(8, 20)
    want = Encoder(PerRow, base_cfg(), tok)({"text": column}, list(range(20)))
    assert Encoder(BatchFails, base_cfg(), tok)({"text": column}, list(range(20))).equals(want)
    assert capsys.readouterr().err == ("warning: strategy 'batch_fails': encode_batch failed (RuntimeError: batch "
                                       "bug); encoded with encode, row by row instead (same samples, slower)\n")
