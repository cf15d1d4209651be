"""The rechunker's file becomes the saved train split: chunks are written while
tokenising goes on, the test split's chunks are kept back, and the save moves the file
instead of copying it. The saved folder must read back exactly as
``DatasetDict.save_to_disk`` writes it."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from rwkv_plug.data import in_place, store
from rwkv_plug.data import split as splitting
from rwkv_plug.data.pipeline import prepare_dataset
from rwkv_plug.data.rechunk import Rechunker

from conftest import random_texts as texts


def feed_all(out: Rechunker, seed: int = 0, batches: int = 7):
    rnd = np.random.default_rng(seed)
    for k in range(batches):
        lengths = rnd.integers(0, 400 if k % 3 else 5, size=20).astype(np.int64)  # some feeds cut no chunk
        ids = rnd.integers(0, 65536, size=int(lengths.sum())).astype(np.int32)
        out.feed(lengths, ids, np.ones(len(ids), dtype=np.int8))
    return out.finish()


def rows(ds):
    return ds.with_format("arrow")[:]


@pytest.mark.parametrize("test_split", [0.1, 3, 0])
def test_rechunker_keeps_back_the_test_chunks_and_cuts_the_same_chunks(tmp_path, test_split):
    plain = feed_all(Rechunker(64, [0], 1, str(tmp_path / "plain.arrow")))
    held = feed_all(Rechunker(64, [0], 1, str(tmp_path / "held.arrow"),
                              hold=lambda n: splitting.test_count(n, test_split)))
    n = held.chunks
    assert n == plain.chunks > 20 and held.remainder == plain.remainder
    assert rows(held.dataset).equals(rows(plain.dataset))
    assert held.file == str(tmp_path / "held.arrow")
    assert held.file_rows == n - splitting.test_count(n, test_split)  # exactly the train rows


def test_rechunker_writes_everything_when_the_test_chunks_would_not_fit_in_memory(tmp_path, monkeypatch):
    plain = feed_all(Rechunker(64, [0], 1, str(tmp_path / "plain.arrow")))
    monkeypatch.setattr(Rechunker, "MEMORY_BYTES", 64 * 5 * 3)  # room for 3 chunks
    held = feed_all(Rechunker(64, [0], 1, str(tmp_path / "held.arrow"), hold=lambda n: n // 2))
    assert held.file_rows == held.chunks == plain.chunks  # none kept back: the save will copy
    assert held.rest_file is None
    assert rows(held.dataset).equals(rows(plain.dataset))


def test_save_splits_moves_the_file_and_writes_what_save_to_disk_writes(tmp_path):
    res = feed_all(Rechunker(64, [0], 1, str(tmp_path / "work.arrow"),
                             hold=lambda n: splitting.test_count(n, 0.1)))
    train, test = splitting.split_train_test(res.dataset, 0.1, False)
    dd = datasets.DatasetDict({"train": train, "test": test})
    dd.save_to_disk(str(tmp_path / "copied"))
    assert res.rest_file == str(tmp_path / "work-rest.arrow")  # the test split's chunks
    in_place.save_splits(dd, tmp_path / "moved", {"train": res.file, "test": res.rest_file})
    assert not (tmp_path / "work.arrow").exists() and not (tmp_path / "work-rest.arrow").exists()  # moved
    moved, copied = tmp_path / "moved", tmp_path / "copied"
    names = ["dataset_dict.json"] + [f"{s}/{f}" for s in ("train", "test") for f in ("state.json", "dataset_info.json")]
    for name in names:
        assert (moved / name).read_text() == (copied / name).read_text(), name
    assert sorted(p.name for p in (moved / "train").iterdir()) == sorted(p.name for p in (copied / "train").iterdir())
    back, want = datasets.load_from_disk(str(moved)), datasets.load_from_disk(str(copied))
    for split in ("train", "test"):
        assert len(back[split]) > 0 and rows(back[split]).equals(rows(want[split]))
    for split in ("train", "test"):
        assert json.loads((moved / split / "state.json").read_text())["_data_files"] == [
            {"filename": "data-00000-of-00001.arrow"}]


def test_save_splits_copies_when_the_file_is_not_the_split(tmp_path):
    res = feed_all(Rechunker(64, [0], 1, str(tmp_path / "work.arrow"), hold=lambda n: 0))
    train, test = splitting.split_train_test(res.dataset, 0.1, False)  # the file holds test rows too
    in_place.save_splits(datasets.DatasetDict({"train": train, "test": test}), tmp_path / "out", {"train": res.file})
    assert (tmp_path / "work.arrow").exists()  # left alone: the ordinary save wrote the split
    back = datasets.load_from_disk(str(tmp_path / "out"))
    assert rows(back["train"]).equals(rows(train)) and rows(back["test"]).equals(rows(test))


@pytest.mark.usefixtures("offline_data")
@pytest.mark.parametrize("stream, data", [
    (True, {"num_proc": 1}),
    (True, {"num_proc": 2, "test_split": 3}),
    (False, {"num_proc": 2}),  # parsed first, then tokenised in this process
    (True, {"test_split_shuffle": True}),  # train is not the file's rows in order: copied
])
def test_build_moves_the_train_file_and_builds_the_same_dataset(tmp_path, monkeypatch, stream, data):
    from rwkv_plug.data import streamed

    monkeypatch.setattr(streamed, "ENABLED", stream)
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(3, 400, 120)), encoding="utf-8")
    moved: list[str] = []
    real = in_place._save_moved
    monkeypatch.setattr(in_place, "_save_moved",
                        lambda ds, source, dest: moved.append(dest.name) or real(ds, source, dest))

    def build(name: str):
        cfg = {"data_path": str(tmp_path / name), "source": str(src), "tokenizer": "world",
               "text_rechunk_force": True, "text_rechunk_size": 128, **data}
        dd, _ = prepare_dataset(cfg, force=True, log=lambda _m: None)
        return {s: rows(dd[s]) for s in ("train", "test")}, store.read_meta(tmp_path / name)

    fast, fast_meta = build("fast")
    assert moved == ([] if data.get("test_split_shuffle") else ["train", "test"])
    monkeypatch.setattr(in_place, "_moves_whole", lambda ds, source: False)
    slow, slow_meta = build("slow")
    for split in ("train", "test"):
        assert fast[split].num_rows > 0 and fast[split].equals(slow[split]), split
    assert fast_meta["fingerprint"] == slow_meta["fingerprint"] and fast_meta["summary"] == slow_meta["summary"]


@pytest.mark.usefixtures("offline_data")
@pytest.mark.parametrize("stream, data", [
    (True, {}),  # both splits' files moved
    (True, {"test_split_shuffle": True, "data_prefix_skip_mask": 5}),  # rows picked at random
    (True, {"sort_by_length": True, "test_split": 3}),
    (False, {"num_proc": 2, "source_test": True}),  # the source's own test split
])
def test_statistics_from_the_chunks_are_those_of_the_saved_splits(tmp_path, monkeypatch, stream, data):
    """The rechunker's per-chunk counts give the recorded statistics without a pass over
    the saved tokens; they must be what a pass over the saved splits counts."""
    from rwkv_plug.data import streamed, summary

    monkeypatch.setattr(streamed, "ENABLED", stream)
    passes = []
    real = summary.split_stats
    monkeypatch.setattr(summary, "split_stats", lambda ds, *a: passes.append(1) or real(ds, *a))
    data = dict(data)
    (tmp_path / "d").mkdir()
    splits = [("train", 4)] + ([("test", 5)] if data.pop("source_test", False) else [])
    for name, seed in splits:
        (tmp_path / "d" / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in texts(seed, 300, 120)), encoding="utf-8")
    cfg = {"data_path": str(tmp_path / "out"), "source": "json", "source_data_dir": str(tmp_path / "d"),
           "tokenizer": "world", "text_rechunk_force": True, "text_rechunk_size": 96, **data}
    dd, _ = prepare_dataset(cfg, force=True, log=lambda _m: None)
    assert passes == []  # no pass over the splits
    recorded = store.read_meta(tmp_path / "out")["summary"]["splits"]
    for split in ("train", "test"):
        counted = real(dd[split])[0]
        assert counted.samples > 0 and 0 < counted.trained_tokens < counted.tokens, split
        assert recorded[split] == counted.__dict__, split
