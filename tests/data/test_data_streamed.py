"""A JSON Lines source tokenised while it is parsed (data/streamed.py) builds exactly what
parsing first and tokenising after builds, and gives way to the ordinary build where
the direct reader would."""

from __future__ import annotations

import json

import pytest

from rwkv_plug.data import direct, in_process, streamed
from rwkv_plug.data.pipeline import load_summary, prepare_dataset

from conftest import random_texts as texts

pytestmark = pytest.mark.usefixtures("offline_data")


@pytest.fixture
def small_batches(monkeypatch):
    """Many parse batches (and tokeniser batches inside each), on the in-process path."""
    from rwkv_plug.data.tokenizer import load_tokenizer

    monkeypatch.setattr(direct, "JSON_CHUNK", 40_000)
    monkeypatch.setattr(streamed, "LEAD_BYTES", 7_000)  # the first batch comes in two
    monkeypatch.setattr(in_process, "BATCH_BYTES", 1)
    monkeypatch.setattr(in_process, "MIN_BATCH_ROWS", 37)
    monkeypatch.setattr(streamed, "BATCH_BYTES", 1)
    monkeypatch.setattr(streamed, "MIN_BATCH_ROWS", 37)
    monkeypatch.setattr(load_tokenizer("world", {}), "threads", 2)


def spy(monkeypatch) -> list:
    """Whether each build took the streamed path (True) or gave way (False)."""
    took: list[bool] = []
    real = streamed.build_streamed
    monkeypatch.setattr(streamed, "build_streamed", lambda *a: took.append(bool(r := real(*a))) or r)
    return took


def build(tmp_path, monkeypatch, src, name: str, stream: bool, **data):
    monkeypatch.setattr(streamed, "ENABLED", stream)
    lines: list[str] = []
    cfg = {"data_path": str(tmp_path / name), "source": str(src), "tokenizer": "world", **data}
    dd, _ = prepare_dataset(cfg, force=True, log=lines.append)
    tables = {s: dd[s].with_format("arrow")[:] for s in ("train", "test")}
    return tables, lines[1:], load_summary(tmp_path / name)


def write_rows(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize("data", [
    {"text_rechunk_force": True, "text_rechunk_size": 128, "data_prefix_skip_mask": 2},
    {"min_token_size": 3, "test_split": 5, "test_split_shuffle": True},
])
def test_streamed_build_equals_the_ordinary_one(tmp_path, monkeypatch, small_batches, data):
    folder = tmp_path / "src"
    folder.mkdir()
    rows = [{"text": t} for t in texts(7, 1200, 120)]
    rows[5], rows[9], rows[700] = {"text": None}, {"text": ""}, {"text": "x"}
    write_rows(folder / "a.jsonl", rows[:500])  # two files of one train split
    write_rows(folder / "b.jsonl", rows[500:])
    took = spy(monkeypatch)
    fast, fast_log, fast_summary = build(tmp_path, monkeypatch, folder, "fast", True, **data)
    slow, slow_log, slow_summary = build(tmp_path, monkeypatch, folder, "slow", False, **data)
    assert took == [True, False]
    for split in ("train", "test"):
        assert fast[split].num_rows > 0 and fast[split].equals(slow[split]), f"{split} differs"
    assert fast_log == slow_log and fast_summary == slow_summary
    assert any("skipped" in line for line in fast_log)  # the bad rows were counted, with file:line


def test_a_later_batch_of_another_shape_gives_way_to_the_ordinary_build(tmp_path, monkeypatch, small_batches):
    """datasets casts later batches to the first one's types; the direct reader gives way,
    and so does the streamed build, after tokenising part of the file."""
    rows = [{"text": t} for t in texts(8, 1000, 120)]
    rows[900] = {"text": rows[900]["text"], "extra": 1}  # a new column, well after the first batch
    src = tmp_path / "src.jsonl"
    write_rows(src, rows)
    took = spy(monkeypatch)
    got, got_log, _ = build(tmp_path, monkeypatch, src, "a", True, text_rechunk_force=True, text_rechunk_size=64)
    want, want_log, _ = build(tmp_path, monkeypatch, src, "b", False, text_rechunk_force=True, text_rechunk_size=64)
    assert took == [False, False]
    assert got["train"].equals(want["train"]) and got_log == want_log


def test_a_lead_part_of_other_types_gives_way_to_the_ordinary_build(tmp_path, monkeypatch, small_batches):
    """The first batch's two parts (streamed.LEAD_BYTES) disagree where the whole batch
    would not (a column null in every row of the first part): the ordinary build decides."""
    rows = [{"text": t or "some text", "note": None} for t in texts(10, 600, 120)]
    for i in range(60, 600, 7):
        rows[i]["note"] = "checked"  # text from row 60 on: past the lead, inside the first batch
    src = tmp_path / "src.jsonl"
    write_rows(src, rows)
    assert len("".join(json.dumps(r) + "\n" for r in rows[:60])) > streamed.LEAD_BYTES
    took = spy(monkeypatch)
    got, got_log, _ = build(tmp_path, monkeypatch, src, "a", True, text_rechunk_force=True, text_rechunk_size=64)
    want, want_log, _ = build(tmp_path, monkeypatch, src, "b", False, text_rechunk_force=True, text_rechunk_size=64)
    assert took == [False, False]
    assert got["train"].num_rows > 0 and got["train"].equals(want["train"]) and got_log == want_log


def test_a_strict_error_names_the_file_and_line_as_the_ordinary_build_does(tmp_path, monkeypatch, small_batches):
    from rwkv_plug.core.errors import DataError

    rows = [{"text": t or "some text"} for t in texts(9, 600, 120)]
    rows[431] = {"text": None}  # in a later parse batch
    src = tmp_path / "src.jsonl"
    write_rows(src, rows)
    messages = []
    for stream in (True, False):
        with pytest.raises(DataError) as err:
            build(tmp_path, monkeypatch, src, f"out-{stream}", stream, strict=True)
        messages.append(str(err.value))
        assert not (tmp_path / f"out-{stream}").exists()
    assert messages[0] == messages[1] and "src.jsonl:432" in messages[0]


def _batches_as_read_at_once(raw: bytes, chunk: int, lead: int) -> list[int]:
    """Rows per part when each batch (``chunk`` bytes and the rest of their line) is read
    whole and the first is cut after the first line end at or past ``lead``, ``3 * lead``,
    ``7 * lead``, ... (those under ``chunk``)."""
    parts, pos = [], 0
    while pos < len(raw):
        end = raw.find(b"\n", pos + chunk)
        batch = raw[pos:len(raw) if end < 0 else end + 1]
        cuts, at = [0], lead
        while pos == 0 and 0 < at < chunk:
            cut = batch.find(b"\n", at) + 1
            if 0 < cut < len(batch) and cut > cuts[-1]:
                cuts.append(cut)
            at = 2 * at + lead
        parts += [batch[a:b] for a, b in zip(cuts, cuts[1:] + [len(batch)])]
        pos += len(batch)
    return [p.count(b"\n") for p in parts]


@pytest.mark.parametrize("lead", [0, 1, 37, 100, 333, 400, 999, 1000, 1001, 5000])
def test_the_lead_parts_are_read_one_by_one_and_cut_where_the_whole_batch_would_be(tmp_path, monkeypatch, lead):
    """The first batch's parts are read (and handed to the parser) one by one; they are
    the parts of the batch read at once, also where a line ends at a cut or at the batch
    size, or runs past them."""
    import random

    rnd = random.Random(lead)
    monkeypatch.setattr(direct, "JSON_CHUNK", 1000)
    for sizes in ([rnd.randint(0, 120) for _ in range(90)], [20] * 60, [1500, 3, 7, 2000, 5],
                  [983, 5, 30], [987, 5, 5], [990] * 4, [2]):
        rows = [{"text": "x" * n} for n in sizes]  # each line is 13 + n bytes with its newline
        src = tmp_path / "src.jsonl"
        write_rows(src, rows)
        raw = src.read_bytes()
        got = [t.num_rows for t in direct._json_tables(src, lead)]
        assert got == _batches_as_read_at_once(raw, 1000, lead), sizes
        assert sum(got) == len(rows)
