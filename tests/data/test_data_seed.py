"""The seed notebook's YAMLs, each through ``preload``.

Expected tokens and masks are computed from the tokenizer itself, piece by
piece, never copied from a run.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from data_helpers import WORDS, load, neox, rows_of, run, seed_config, words, write_cfg, write_jsonl
from rwkv_plug.data.tokenizer import load_tokenizer

pytestmark = [pytest.mark.usefixtures("offline_data"), pytest.mark.slow]  # each builds a seed dataset


# -- the seed notebook's YAMLs ----------------------------------------------
def test_seed_enwiki_text_rechunk(tmp_path, capsys):
    tok = neox()
    docs = [words(i, 200 if i % 5 else 10) for i in range(60)]  # every 5th doc is short
    write_jsonl(tmp_path / "enwiki.jsonl", [{"text": d, "title": f"t{i}"} for i, d in enumerate(docs)])
    cfg = write_cfg(tmp_path / "enwiki.yaml", seed_config(
        "example-hf-enwiki.yaml", data_path="./datapath/enwiki_10k_neox_1024/", source="enwiki.jsonl"))
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
    assert ("skipped 12: shorter than min_token_size (64) (e.g. train row 0, 0-based, "
            f"{tmp_path / 'enwiki.jsonl'}:1)") in out


def test_seed_prompt_completion(tmp_path, capsys, monkeypatch):
    tok = neox()
    rows = [{"prompt": f"What is the emotion? {words(i, 5)} Output:", "completion": f" {WORDS[i]}<|endoftext|>"}
            for i in range(6)]
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # data_path and source are relative to the cwd
    write_jsonl(tmp_path / "work" / "self-instruct.jsonl", rows)
    cfg = write_cfg(tmp_path / "pc.yaml", seed_config("example-hf-prompt-completion.yaml",
                                                      source="self-instruct.jsonl"))
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
    cfg = write_cfg(tmp_path / "mc.yaml", seed_config("example-hf-multi-column-keys.yaml", source="dolly.jsonl",
                                                      test_split="1"))
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


