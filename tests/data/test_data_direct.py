"""The direct reader (``data/direct.py``) gives exactly what ``load_dataset`` gives.

For each local file kind the source is read both ways and compared split by
split: split names and order, features, Arrow types and every cell. Sources
the direct reader must not handle (mixed types, JSON arrays, reader options,
nested objects) must fall back, so ``load_source`` still matches
``load_dataset``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rwkv_plug.data import direct
from rwkv_plug.data.sources import load_source, resolve_source


pytestmark = pytest.mark.usefixtures("offline_data")


@pytest.fixture(autouse=True)
def quiet_datasets():
    import datasets

    datasets.disable_progress_bars()



def reference(src, tmp_path: Path):
    """The source as ``datasets.load_dataset`` reads it (the path used before)."""
    import datasets

    return datasets.load_dataset(src.builder, cache_dir=str(tmp_path / "hf"), **src.params)


def assert_same(got: dict, want, label: str = "") -> None:
    assert list(got) == list(want), label
    for split in want:
        a, b = got[split], want[split]
        assert a.features == b.features, (label, split)
        assert a.data.table.schema.equals(b.data.table.schema, check_metadata=False), (label, split)
        assert a.num_rows == b.num_rows and a.column_names == b.column_names, (label, split)
        assert a.to_list() == b.to_list(), (label, split)
        assert a.split == b.split


def both(source: str, tmp_path: Path, **cfg):
    src = resolve_source({"source": source, **cfg})
    return src, direct.read_direct(src), reference(src, tmp_path)


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"text": "first line\n\nwith a blank line", "n": 1, "score": 0.5, "ok": True, "tags": ["a", "b"]},
        {"text": None, "n": 2, "score": 1.5, "ok": False, "tags": []},
        {"text": "caf\u00e9 \u65e5\u672c \U0001f600", "n": None, "score": None, "ok": None, "tags": None},
        {"n": 4, "score": 2.0, "ok": True, "tags": ["c"], "extra": "only here"}]


def test_jsonl_file_with_none_missing_and_unicode_cells(tmp_path):
    jsonl(tmp_path / "a.jsonl", ROWS)
    _, got, want = both("a.jsonl", tmp_path)
    assert got is not None
    assert_same(got, want)
    assert got["train"][1]["text"] is None and got["train"][3]["extra"] == "only here"


def test_jsonl_over_several_batches(tmp_path, monkeypatch):
    # small batches, so the file is parsed in many pieces as datasets would
    monkeypatch.setattr(direct, "JSON_CHUNK", 256)
    rows = [{"text": f"row {i} " + "word " * (i % 7), "id": i} for i in range(300)]
    jsonl(tmp_path / "a.jsonl", rows)
    src = resolve_source({"source": "a.jsonl"})
    got = direct.read_direct(src)
    assert got is not None and got["train"].to_list() == rows
    assert_same(got, reference(src, tmp_path))


def test_json_lines_in_a_dot_json_file(tmp_path):
    jsonl(tmp_path / "a.json", ROWS[:2])
    _, got, want = both("a.json", tmp_path)
    assert got is not None
    assert_same(got, want)


def test_txt_file_is_one_row_with_the_text_intact(tmp_path):
    body = "line one\r\nline two\n\n\nafter blank lines \u00e9\n"
    (tmp_path / "a.txt").write_bytes(body.encode())
    _, got, want = both("a.txt", tmp_path)
    assert got is not None
    assert_same(got, want)
    assert got["train"][0]["text"] == "line one\nline two\n\n\nafter blank lines \u00e9\n"


def test_txt_folder_one_row_per_file(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"doc{i}.txt").write_text(f"document {i}\n\nparagraph\n")
    (tmp_path / "d" / "test.txt").write_text("held out\n")
    _, got, want = both("d", tmp_path)
    assert got is not None and list(got) == ["train", "test"]
    assert_same(got, want)


def test_csv_file_with_empty_cells_and_numbers(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"prompt": ["a, quoted", "", "x\ny"], "completion": ["b", "c", None],
                       "n": [1, 2, 3], "f": [0.5, 1.0, 2.0]})
    df.to_csv(tmp_path / "a.csv", index=False)
    _, got, want = both("a.csv", tmp_path)
    assert got is not None
    assert_same(got, want)


def test_csv_over_several_chunks(tmp_path):
    rows = "".join(f"q{i},{'' if i % 1000 == 3 else 'answer ' + str(i)}\n" for i in range(25_000))
    (tmp_path / "a.csv").write_text("prompt,completion\n" + rows)
    _, got, want = both("a.csv", tmp_path)
    assert got is not None and got["train"].num_rows == 25_000
    assert_same(got, want)


def test_parquet_file(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"text": ["one", None, "three"], "n": [1, 2, 3],
                       "ids": [[1, 2], [], [3]]}, index=[10, 20, 30])
    df.to_parquet(tmp_path / "a.parquet")  # keeps its index as a column
    _, got, want = both("a.parquet", tmp_path)
    assert got is not None
    assert_same(got, want)


def test_folder_splits_by_file_name(tmp_path):
    (tmp_path / "d").mkdir()
    jsonl(tmp_path / "d" / "train-1.jsonl", [{"text": f"t{i}"} for i in range(3)])
    jsonl(tmp_path / "d" / "train-2.jsonl", [{"text": f"u{i}"} for i in range(2)])
    jsonl(tmp_path / "d" / "dev.jsonl", [{"text": "dev row"}])
    jsonl(tmp_path / "d" / "my_test.jsonl", [{"text": "test row"}])
    (tmp_path / "d" / "README").write_text("not data")
    _, got, want = both("d", tmp_path)
    assert got is not None and set(got) == {"validation", "train", "test"}
    assert_same(got, want)
    assert got["train"]["text"] == ["t0", "t1", "t2", "u0", "u1"]


@pytest.mark.parametrize("case", ["mixed_types", "json_array", "bom", "nested", "reader_option",
                                  "schemas_differ", "all_null_column"])
def test_fallback_cases_match_load_dataset(tmp_path, case):
    """Where datasets does more than a plain parse, the direct reader declines
    and load_source gives load_dataset's result."""
    cfg: dict = {}
    if case == "mixed_types":  # datasets JSON-encodes a column of ints and strings
        jsonl(tmp_path / "a.jsonl", [{"text": "good"}, {"text": 5}, {"text": None}])
    elif case == "json_array":
        (tmp_path / "a.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    elif case == "bom":
        (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "one"}\n{"text": "two"}\n')
    elif case == "nested":
        jsonl(tmp_path / "a.jsonl", [{"text": "one", "meta": {"a": 1}}, {"text": "two", "meta": {"b": "x"}}])
    elif case == "reader_option":
        (tmp_path / "a.csv").write_text("text;n\nhello;1\nworld;2\n")
        cfg = {"source_dataset_params": {"delimiter": ";"}}
    elif case == "schemas_differ":  # the test file has other types than train
        (tmp_path / "d").mkdir()
        jsonl(tmp_path / "d" / "train.jsonl", [{"text": "one", "n": 1}])
        jsonl(tmp_path / "d" / "test.jsonl", [{"text": "two", "n": "x"}])
    else:
        jsonl(tmp_path / "a.jsonl", [{"text": "one", "meta": None}, {"text": "two", "meta": None}])
    source = "d" if case == "schemas_differ" else next(p.name for p in tmp_path.iterdir() if p.is_file())
    src = resolve_source({"source": source, **cfg})
    assert direct.read_direct(src) is None
    try:
        want = reference(src, tmp_path / "ref")
    except Exception:  # noqa: BLE001 - then load_source must fail too, as before
        with pytest.raises(Exception):
            load_source(src, {"source": source}, cache_dir=str(tmp_path / "hf"))
        return
    got, _ = load_source(src, {"source": source}, cache_dir=str(tmp_path / "hf"))
    assert_same({"train": got["train"]}, {"train": want["train"]}, case)


def test_bad_json_still_names_the_file(tmp_path):
    from rwkv_plug.core.errors import DataError

    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    src = resolve_source({"source": "bad.jsonl"})
    assert direct.read_direct(src) is None
    with pytest.raises(DataError, match="bad.jsonl"):
        load_source(src, {"source": "bad.jsonl"}, cache_dir=str(tmp_path / "hf"))


def test_large_sources_use_load_dataset(tmp_path):
    jsonl(tmp_path / "a.jsonl", ROWS)
    src = resolve_source({"source": "a.jsonl"})
    assert direct.read_direct(src, limit=10) is None
    assert direct.read_direct(src) is not None


def test_load_source_uses_the_direct_reader_for_plain_files(tmp_path):
    (tmp_path / "d").mkdir()
    jsonl(tmp_path / "d" / "train.jsonl", [{"text": "a"}, {"text": "b"}])
    jsonl(tmp_path / "d" / "test.jsonl", [{"text": "c"}])
    jsonl(tmp_path / "d" / "dev.jsonl", [{"text": "d"}])
    src = resolve_source({"source": "d"})
    dd, ignored = load_source(src, {"source": "d"}, cache_dir=str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()  # no Arrow cache written
    assert dd["train"]["text"] == ["a", "b"] and dd["test"]["text"] == ["c"] and ignored == ["validation"]
    dd, ignored = load_source(src, {"source": "d", "source_dataset_split": "validation"},
                              cache_dir=str(tmp_path / "hf"))
    assert dd["train"]["text"] == ["d"] and ignored == ["train"]


# -- the source's identity in the cache fingerprint ------------------------------
def test_identity_notices_an_edit_with_the_same_size_and_mtime(tmp_path):
    import os

    path = jsonl(tmp_path / "a.jsonl", [{"text": "hello world"}])
    src = resolve_source({"source": "a.jsonl"})
    before = src.identity()
    st = path.stat()
    path.write_text(path.read_text().replace("hello", "jello"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = src.identity()
    assert [f["size"] for f in after["files"]] == [f["size"] for f in before["files"]]
    assert after != before and src.identity() == after


def test_big_files_get_a_sampled_hash_that_notices_edits(tmp_path, monkeypatch):
    from rwkv_plug.data import sources

    monkeypatch.setattr(sources, "HASH_BLOCK", 16)
    monkeypatch.setattr(sources, "HASH_SAMPLES", 4)
    path = tmp_path / "big.txt"
    path.write_bytes(bytes(range(256)) * 4)  # 1024 bytes: over the limit below
    src = resolve_source({"source": "big.txt"})
    before = src.identity(hash_limit=100)
    (key,) = [k for k in before["files"][0] if k.endswith("_sampled")]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # the last block is always sampled
    path.write_bytes(bytes(data))
    assert src.identity(hash_limit=100)["files"][0][key] != before["files"][0][key]
    assert key in src.identity(hash_limit=100)["files"][0]
    assert key.replace("_sampled", "") in src.identity(hash_limit=1 << 20)["files"][0]


def test_an_old_fingerprint_format_says_so():
    from rwkv_plug.data.store import _source_change

    old = {"files": [{"path": "/a", "size": 3, "mtime_ns": 7, "sha256": "x"}]}
    new = {"files": [{"path": "/a", "size": 3, "mtime_ns": 7, "xxh3_128": "y"}]}
    assert "fingerprint format" in _source_change(old, new)
    new["files"][0]["size"] = 4
    assert _source_change(old, new) == "source file changed (/a)"


def test_the_size_limit_is_read_at_call_time(tmp_path, monkeypatch):
    jsonl(tmp_path / "a.jsonl", ROWS)
    src = resolve_source({"source": "a.jsonl"})
    monkeypatch.setattr(direct, "DIRECT_LIMIT", -1)  # how bench --also-load-dataset turns it off
    assert direct.read_direct(src) is None


def test_text_and_numbers_across_the_files_of_a_split_are_refused(tmp_path):
    """load_dataset would turn the numbers into text ('12345'); the direct reader says where."""
    from rwkv_plug.core.errors import DataError

    (tmp_path / "d").mkdir()
    jsonl(tmp_path / "d" / "a.jsonl", [{"text": "one", "title": "t"}])
    jsonl(tmp_path / "d" / "b.jsonl", [{"text": None}, {"text": 12345}])
    src = resolve_source({"source": "d"})
    with pytest.raises(DataError, match=r"b\.jsonl:2: column 'text' holds a number, but .*a\.jsonl:1 holds text"):
        direct.read_direct(src)
    jsonl(tmp_path / "d" / "b.jsonl", [{"text": None}, {"text": "two"}])  # only a column missing: fine
    assert direct.read_direct(src) is None  # datasets fills the missing column
    jsonl(tmp_path / "d" / "b.jsonl", [{"text": "two", "title": "u"}])
    assert direct.read_direct(src)["train"]["text"] == ["one", "two"] and src.row_counts == {"train": [1, 1]}
