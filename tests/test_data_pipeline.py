"""The dataset pipeline end to end: each seed-notebook YAML through ``preload``.

Expected tokens and masks are computed from the tokenizer itself, piece by
piece, never copied from a run.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path

import pytest

from rwkv_plug.core.cli import main
from rwkv_plug.data.tokenizer import load_tokenizer

WORDS = ("river stone light summer paper garden window music silver forest winter "
         "morning ocean story bridge candle").split()


pytestmark = pytest.mark.usefixtures("offline_data")



def neox():
    return load_tokenizer("neox", {})


def words(seed: int, n: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_cfg(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def run(*args: str, capsys) -> tuple[int, str, str]:
    """The real console entry point: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def load(path: str | Path):
    import datasets

    return datasets.load_from_disk(str(path))


def rows_of(ds) -> list[tuple[list[int], list[int]]]:
    return [(r["input_ids"], r["loss_mask"]) for r in ds]


# -- the seed notebook's YAMLs ----------------------------------------------
def test_seed_enwiki_text_rechunk(tmp_path, capsys):
    tok = neox()
    docs = [words(i, 200 if i % 5 else 10) for i in range(60)]  # every 5th doc is short
    write_jsonl(tmp_path / "enwiki.jsonl", [{"text": d, "title": f"t{i}"} for i, d in enumerate(docs)])
    cfg = write_cfg(tmp_path / "enwiki.yaml", """\
        trainer:
          max_steps: 10
          target_batch_size: 32
        model:
          load_model: ../model/L6-D512-neox-init.pth
          ctx_len: 1024
          lr_init: 3e-4
          bptt_learning: true
          bptt_learning_range: -1
        data:
          data_path: ./datapath/enwiki_10k_neox_1024/

          source: "enwiki.jsonl"
          # source_dataset_params:
          #   language: en

          tokenizer: neox
          min_token_size: 64
          max_token_size: -1
          text_rechunk_size: 2048
          text_rechunk_force: true
          custom_text_key: 'text'
          test_split: 0.01
          test_split_shuffle: false
        """)
    code, out, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "datapath/enwiki_10k_neox_1024")
    kept = [tok.encode(d) for d in docs if len(tok.encode(d)) >= 64]
    sep = tok.encode("\n")
    stream = [t for ids in kept for t in ids + sep]
    n_chunks = len(stream) // 2048
    assert n_chunks >= 2
    chunks = [r[0] for r in rows_of(dd["train"])] + [r[0] for r in rows_of(dd["test"])]
    assert all(len(c) == 2048 for c in chunks)
    assert len(dd["test"]) == math.ceil(0.01 * n_chunks)  # the last chunk(s), no shuffle
    assert [t for c in chunks for t in c] == stream[: n_chunks * 2048]
    assert all(all(m == 1 for m in r["loss_mask"]) for r in dd["train"])
    assert f"remainder dropped: {len(stream) - n_chunks * 2048} tokens" in out
    assert f"skipped 12: shorter than min_token_size (64) (e.g. train row 0, 0-based)" in out


def test_seed_prompt_completion(tmp_path, capsys, monkeypatch):
    tok = neox()
    rows = [{"prompt": f"What is the emotion? {words(i, 5)} Output:", "completion": f" {WORDS[i]}<|endoftext|>"}
            for i in range(6)]
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # data_path and source are relative to the cwd
    write_jsonl(tmp_path / "work" / "self-instruct.jsonl", rows)
    cfg = write_cfg(tmp_path / "pc.yaml", """\
        trainer:
          max_steps: 10
        model:
          ctx_len: 1024
        data:
          data_path: ../datapath/self-instruct-base/
          source: "self-instruct.jsonl"
          tokenizer: neox
          disable_prompt_completion_mask: false
        """)
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "datapath/self-instruct-base")
    want = []
    for r in rows:
        p, c = tok.encode(r["prompt"]), tok.encode(r["completion"])
        assert c[-1] == 0  # <|endoftext|> is token 0
        want.append((p + c, [0] * len(p) + [1] * len(c)))
    assert rows_of(dd["train"]) == want[:5]
    assert rows_of(dd["test"]) == want[5:]  # test_split 0.01 of 6 -> the last row


def test_seed_multi_column_dolly(tmp_path, capsys, monkeypatch):
    tok = neox()
    rows = [
        {"category": "closed_qa", "instruction": "When did Virgin Australia start operating?",
         "input": "Virgin Australia, the trading name of Virgin Australia Airlines.",
         "output": "Virgin Australia commenced services on 31 August 2000."},
        {"category": "open_qa", "instruction": "Name a river.", "input": "", "output": "The Nile."},
        {"category": "open_qa", "instruction": "Name a stone.", "input": None, "output": "Granite."},
    ]
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    write_jsonl(tmp_path / "work" / "dolly.jsonl", rows)
    cfg = write_cfg(tmp_path / "mc.yaml", """\
        trainer:
          max_steps: 10
          target_batch_size: 32
        model:
          load_model: ../model/L6-D512-neox-init.pth
          ctx_len: 1024
          lr_init: 1e-4
          bptt_learning: true
          bptt_learning_range: -1
        data:
          data_path: ../datapath/self-instruct-base/
          source: "dolly.jsonl"
          tokenizer: neox
          multi_column_keys: ['instruction', 'input', 'output']
          multi_column_prefix: ['Instruction:\\n', 'Input:\\n', 'Output:\\n']
          multi_column_train_mask: [true, false, true]
          multi_column_separator: '\\n\\n'
          test_split: 1
        """)
    assert "'Instruction:\\n'" in cfg.read_text()  # single-quoted, as in the seed
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "datapath/self-instruct-base")
    got = rows_of(dd["train"]) + rows_of(dd["test"])
    r = rows[0]
    assert tok.decode(got[0][0]) == (f"Instruction:\n{r['instruction']}\n\nInput:\n{r['input']}"
                                     f"\n\nOutput:\n{r['output']}")
    for (ids, mask), r in zip(got, rows):
        want_ids, want_mask = [], []
        for key, prefix, learn in (("instruction", "Instruction:\n", 1), ("input", "Input:\n", 0),
                                   ("output", "Output:\n", 1)):
            if not r[key]:
                continue
            if want_ids:
                sep = tok.encode("\n\n")
                want_ids += sep
                want_mask += [1] * len(sep)
            p, v = tok.encode(prefix), tok.encode(r[key])
            want_ids += p + v
            want_mask += [1] * len(p) + [learn] * len(v)
        assert (ids, mask) == (want_ids, want_mask)


def _music_tokenizer(folder: Path) -> None:
    """A small word-level HF tokenizer saved as a local folder (stands in for muse-tokenizer2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{f"n{i}": i + 1 for i in range(40)}, **{f"v{i}": 41 + i for i in range(8)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(str(folder))


def test_seed_music_custom_tokenizer_and_text_key(tmp_path, capsys):
    _music_tokenizer(tmp_path / "muse-tokenizer2")
    rows = [{"bing": " ".join(f"n{(i * 5 + j) % 40} v{j % 8}" for j in range(6 + i % 4)),
             "text": "not this column"} for i in range(30)]
    write_jsonl(tmp_path / "musenet.jsonl", rows)
    cfg = write_cfg(tmp_path / "music.yaml", """\
        data:
          # dataset_path for the prebuilt dataset, using HF `load_from_disk()`
          data_path: ./datapath/musnet/
          source: "musenet.jsonl"
          tokenizer: "./muse-tokenizer2"
          test_split: 0.005
          test_split_shuffle: true
          min_token_size: -1
          max_token_size: -1
          custom_text_key: 'bing'
          data_prefix_skip_mask: 2
        """)
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    tok = load_tokenizer("./muse-tokenizer2", {})
    dd = load(tmp_path / "datapath/musnet")
    assert len(dd["test"]) == 1
    want = sorted((tok.encode(r["bing"]), [0, 0] + [1] * (len(tok.encode(r["bing"])) - 2)) for r in rows)
    assert sorted(rows_of(dd["train"]) + rows_of(dd["test"])) == want  # prefix skip applies here too
    assert all(0 < t < 49 for ids, _ in want for t in ids)
    first = rows_of(dd["test"])
    code, _, _ = run("preload", "--force", str(cfg), capsys=capsys)
    assert code == 0 and rows_of(load(tmp_path / "datapath/musnet")["test"]) == first  # deterministic


# -- sources and rechunking -------------------------------------------------
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


@pytest.mark.parametrize("test_split,shuffle,expected", [(3, False, 3), (0, False, 1), (-1, False, 1),
                                                         (0.25, False, 3), (0.25, True, 3)])
def test_test_split_sizes(tmp_path, capsys, test_split, shuffle, expected):
    tok = neox()
    rows = [{"text": words(i, 4 + i)} for i in range(10)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    cfg = write_cfg(tmp_path / "c.yaml", f"""\
        data:
          data_path: out
          source: a.jsonl
          test_split: {test_split}
          test_shuffle: {str(shuffle).lower()}
        """)
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "out")
    all_ids = [tok.encode(r["text"]) for r in rows]
    test = [r[0] for r in rows_of(dd["test"])]
    train = [r[0] for r in rows_of(dd["train"])]
    assert len(test) == expected
    if shuffle:
        assert sorted(train + test) == sorted(all_ids) and test != all_ids[-expected:]
    else:
        assert train == all_ids[:-expected] and test == all_ids[-expected:]


def test_offset_length_sort_and_reverse(tmp_path, capsys):
    tok = neox()
    rows = [{"text": words(i, 3 + (i * 7) % 11)} for i in range(20)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    cfg = write_cfg(tmp_path / "c.yaml", """\
        data:
          data_path: out
          source: a.jsonl
          dataset_offset: 0.25
          dataset_length: 10
          test_split: 2
          sort_by_length: true
          sort_asc: false
        """)
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "out")
    picked = [tok.encode(r["text"]) for r in rows[5:15]]  # applied once, to the source rows
    assert [r[0] for r in rows_of(dd["test"])] == picked[-2:]
    train = [r[0] for r in rows_of(dd["train"])]
    assert sorted(train) == sorted(picked[:-2])
    assert [len(t) for t in train] == sorted((len(t) for t in train), reverse=True)


def test_two_processes_give_the_same_rows_and_row_numbers(tmp_path, capsys, monkeypatch):
    from rwkv_plug.data import pipeline

    monkeypatch.setattr(pipeline, "SMALL_BYTES", 0)  # use the pool even for tiny data
    tok = neox()
    rows = [{"text": words(i, 6)} if i != 33 else {"text": None} for i in range(40)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    cfg = write_cfg(tmp_path / "c.yaml", """\
        data:
          data_path: out
          source: a.jsonl
          num_proc: 2
          test_split: 1
        """)
    code, out, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    dd = load(tmp_path / "out")
    want = [tok.encode(r["text"]) for r in rows if r["text"] is not None]
    assert [r[0] for r in rows_of(dd["train"]) + rows_of(dd["test"])] == want
    assert "skipped 1: column 'text' is None (e.g. train row 33, 0-based)" in out


# -- cache --------------------------------------------------------------------
def test_cache_reuse_and_rebuild_reasons(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": words(i, 8)} for i in range(5)])
    cfg = write_cfg(tmp_path / "c.yaml", """\
        data:
          data_path: out
          source: a.jsonl
          tokenizer: neox
        """)
    code, out, _ = run("preload", str(cfg), capsys=capsys)
    assert code == 0 and "dataset built" in out
    code, out, _ = run("preload", str(cfg), capsys=capsys)
    assert code == 0 and "reusing the dataset" in out and "dataset reused" in out

    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch
    code, out, _ = run("preload", str(cfg), capsys=capsys)
    assert "source file changed" in out and "dataset built" in out

    write_jsonl(src, [{"text": "a brand new document"}, {"text": "and another one here"}])
    code, out, _ = run("preload", str(cfg), capsys=capsys)
    assert "source file changed" in out
    tok = neox()
    dd = load(tmp_path / "out")
    assert [r[0] for r in rows_of(dd["train"])] == [tok.encode("a brand new document")]

    cfg.write_text(cfg.read_text().replace("tokenizer: neox", "tokenizer: world"))
    code, out, _ = run("preload", str(cfg), capsys=capsys)
    assert "tokenizer changed" in out and "dataset built" in out
    world = load_tokenizer("world", {})
    assert [r[0] for r in rows_of(load(tmp_path / "out")["test"])] == [world.encode("and another one here")]

    cfg.write_text(cfg.read_text() + "  min_token_size: 2\n")
    code, out, _ = run("preload", str(cfg), capsys=capsys)
    assert "data config changed (min_token_size)" in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp dirs left


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "hello world again"}] * 3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    cfg = write_cfg(tmp_path / "c.yaml", "data:\n  data_path: out\n  source: a.jsonl\n")
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 1 and "refusing to replace it" in err
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


# -- the API fit uses, and a third-party strategy --------------------------------
class _Reverse:
    """A third-party plugin: a strategy that learns the words of a column in reverse."""

    @staticmethod
    def strategy_class():
        from rwkv_plug.core.interfaces import Option, Sample, Strategy

        class ReverseWords(Strategy):
            """Reversed words of column 'body'."""

            name = "reverse_words"
            options = (Option("reverse_column", "body", "Column to reverse."),)

            def encode(self, row):
                text = " ".join(reversed(row[self.opts["reverse_column"]].split()))
                ids = self.tokenizer.encode(text)
                return Sample(ids, [1] * len(ids))

        return ReverseWords


def test_prepare_dataset_api_with_a_third_party_strategy(tmp_path):
    from rwkv_plug.core import plugins
    from rwkv_plug.core.hookspecs import hookimpl
    from rwkv_plug.data.pipeline import prepare_dataset

    cls = _Reverse.strategy_class()

    class Plugin:
        @hookimpl
        def register_strategies(self):
            return [cls]

    plugins.current().register(Plugin(), "reverse-plugin")
    try:
        write_jsonl(tmp_path / "a.jsonl", [{"body": "one two three"}, {"body": "four five six"}])
        logs: list[str] = []
        cfg = {"data_path": "out", "source": "a.jsonl", "strategy": "reverse_words",
               "reverse_column": "body", "test_split": 1}
        dd, status = prepare_dataset(cfg, log=logs.append)
        assert status == "built" and any("no dataset at" in m for m in logs)
        assert dd["train"].features["input_ids"].feature.dtype == "int32"
        assert dd["train"].features["loss_mask"].feature.dtype == "int8"
        assert dd["train"][0]["input_ids"] == neox().encode("three two one")
        meta = json.loads((tmp_path / "out" / "rwkv_plug_dataset.json").read_text())
        assert meta["strategy"]["plugin"] == "reverse-plugin"
        dd, status = prepare_dataset(cfg, log=logs.append)
        assert status == "reused" and dd["test"][0]["input_ids"] == neox().encode("six five four")
    finally:
        plugins.current().unregister("reverse-plugin")


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
