"""Sources through ``preload``: file kinds, folders, builders, splits and rechunking."""

from __future__ import annotations

import json

import pytest

from data_helpers import load, neox, rows_of, run, words, write_cfg, write_jsonl

pytestmark = pytest.mark.usefixtures("offline_data")


# -- sources and rechunking -------------------------------------------------
@pytest.mark.slow
def test_txt_source_keeps_blank_lines_and_rechunks(tmp_path, capsys):
    tok = neox()
    (tmp_path / "corpus").mkdir()
    texts = ["First paragraph.\n\nSecond paragraph after a blank line.\n\n\nThird.\n",
             "Another file\nwith lines\n\n" + words(3, 30) + "\n"]
    for i, t in enumerate(texts):
        (tmp_path / "corpus" / f"doc{i}.txt").write_text(t, encoding="utf-8")
    cfg = write_cfg(tmp_path / "t.yaml", """\
        data:
          data_path: out
          source: corpus
          tokenizer: neox
          text_rechunk_size: 8
          text_rechunk_separator: "<|endoftext|>"
          test_split: 1
          data_prefix_skip_mask: 1
        """)
    code, out, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "out")
    stream = [t for text in texts for t in tok.encode(text) + [0]]  # each doc then <|endoftext|>
    chunks = rows_of(dd["train"]) + rows_of(dd["test"])
    assert all(len(ids) == 8 for ids, _ in chunks)
    assert [t for ids, _ in chunks for t in ids] == stream[: len(stream) // 8 * 8]
    # the prefix skip masks the first token of every document and of every chunk
    doc_masks = [m for text in texts for m in [0] + [1] * (len(tok.encode(text)) - 1) + [1]]
    want_masks = [[0] + doc_masks[i * 8 + 1: i * 8 + 8] for i in range(len(chunks))]
    assert [mask for _, mask in chunks] == want_masks
    assert tok.decode(stream).startswith(texts[0])  # blank lines survive
    assert f"remainder dropped: {len(stream) % 8} tokens" in out


@pytest.mark.slow
def test_builder_name_with_source_data_dir_and_inbuilt_test_split(tmp_path, capsys):
    tok = neox()
    (tmp_path / "d").mkdir()
    train = [{"text": words(i, 12)} for i in range(10)]
    test = [{"text": words(100 + i, 9)} for i in range(3)]
    write_jsonl(tmp_path / "d" / "train.jsonl", train)
    write_jsonl(tmp_path / "d" / "test.jsonl", test)
    cfg = write_cfg(tmp_path / "b.yaml", """\
        data:
          data_path: out
          source: json
          source_data_dir: d
          test_split: 0.5
        """)
    code, out, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "out")
    assert [r[0] for r in rows_of(dd["train"])] == [tok.encode(r["text"]) for r in train]
    assert [r[0] for r in rows_of(dd["test"])] == [tok.encode(r["text"]) for r in test]
    assert "data.test_split is not used" in out


def test_missing_split_lists_the_splits(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "hello there"}])
    cfg = write_cfg(tmp_path / "c.yaml", """\
        data:
          data_path: out
          source: a.jsonl
          source_dataset_split: validation
        """)
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 1 and "'validation' is not a split" in err and "it has: train" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["txt_file", "text_builder", "parquet", "csv", "json_array"])
def test_local_source_kinds(tmp_path, capsys, kind):
    import pandas as pd

    tok = neox()
    docs = [words(i, 9) + "\n\nsecond paragraph\n" for i in range(4)]
    data = "data_path: out\n  test_split: 1\n  text_rechunk_size: 5\n"
    if kind == "txt_file":
        (tmp_path / "one.txt").write_text(docs[0])
        source, docs = "one.txt", docs[:1]
    elif kind == "text_builder":
        (tmp_path / "txt").mkdir()
        for i, d in enumerate(docs):
            (tmp_path / "txt" / f"{i}.txt").write_text(d)
        source = "text\n  source_data_dir: txt"
    elif kind == "parquet":
        pd.DataFrame({"text": docs}).to_parquet(tmp_path / "d.parquet")
        source = "d.parquet"
    elif kind == "csv":
        pd.DataFrame({"text": docs}).to_csv(tmp_path / "d.csv", index=False)
        source = "d.csv"
    else:
        (tmp_path / "d.json").write_text(json.dumps([{"text": d} for d in docs]))
        source = "d.json"
    write_cfg(tmp_path / "c.yaml", f"data:\n  source: {source}\n  {data}")
    code, _, err = run("preload", str(tmp_path / "c.yaml"), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "out")
    got = [r[0] for r in rows_of(dd["train"]) + rows_of(dd["test"])]
    if kind in ("txt_file", "text_builder"):  # .txt: whole documents, rechunked automatically
        stream = [t for d in docs for t in tok.encode(d) + tok.encode("\n")]
        assert got == [stream[i:i + 5] for i in range(0, len(stream) // 5 * 5, 5)]
    else:
        assert got == [tok.encode(d) for d in docs]


@pytest.mark.slow
def test_folder_source_splits_by_file_name_and_ignores_other_files(tmp_path, capsys):
    tok = neox()
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "train-part1.jsonl", [{"text": words(i, 6)} for i in range(4)])
    write_jsonl(tmp_path / "d" / "my_test.jsonl", [{"text": "held out words here"}])
    write_jsonl(tmp_path / "d" / "dev.jsonl", [{"text": "validation is not used"}])
    (tmp_path / "d" / "README").write_text("not data")
    write_cfg(tmp_path / "c.yaml", "data:\n  data_path: out\n  source: d\n")
    code, out, err = run("preload", str(tmp_path / "c.yaml"), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "out")
    assert [r[0] for r in rows_of(dd["train"])] == [tok.encode(words(i, 6)) for i in range(4)]
    assert [r[0] for r in rows_of(dd["test"])] == [tok.encode("held out words here")]
    assert "source splits not used: validation" in out
