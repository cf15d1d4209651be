"""The build after the source: test split, row selection, worker processes, the
cache and its rebuild reasons, and the ``prepare_dataset`` API that fit uses."""

from __future__ import annotations

import json
import os

import pytest

from data_helpers import load, neox, rows_of, run, words, write_cfg, write_jsonl
from rwkv_plug.data.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("offline_data")


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # the example row is located in its file: line 34 holds row 33
    assert f"skipped 1: column 'text' is None (e.g. train row 33, 0-based, {tmp_path / 'a.jsonl'}:34)" in out


# -- cache --------------------------------------------------------------------
@pytest.mark.slow
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


@pytest.mark.parametrize("ours", [False, True])
def test_never_replaces_a_folder_with_a_user_file_even_if_it_looks_like_a_dataset(tmp_path, capsys, ours):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "hello world again"}] * 3)
    home = tmp_path / "home2"
    home.mkdir()
    (home / "notes.txt").write_text("precious")
    (home / "dataset_dict.json").write_text('{"splits": ["train"]}')
    if ours:  # even our marker file does not make a stray user file ours
        (home / "rwkv_plug_dataset.json").write_text("{}")
    cfg = write_cfg(tmp_path / "c.yaml", "data:\n  data_path: home2\n  source: a.jsonl\n")
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 1 and "Traceback" not in err and err.count("error: ") == 1, err
    assert "home2" in err and "refusing to replace" in err
    if ours:
        assert "'notes.txt'" in err
    assert (home / "notes.txt").read_text() == "precious"


@pytest.mark.slow
def test_rebuilds_its_own_dataset_but_not_one_with_a_stray_file(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "hello world again"}] * 3)
    cfg = write_cfg(tmp_path / "c.yaml", "data:\n  data_path: out\n  source: a.jsonl\n")
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    code, out, err = run("preload", "--force", str(cfg), capsys=capsys)
    assert code == 0 and "dataset built" in out, err
    (tmp_path / "out" / "train" / "mine.txt").write_text("keep me")
    code, _, err = run("preload", "--force", str(cfg), capsys=capsys)
    assert code == 1 and err.count("error: ") == 1 and "'train/mine.txt'" in err, err
    assert (tmp_path / "out" / "train" / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.parametrize("record", ['{"meta_version": 1, "summary": {"bogus": 1}}',
                                    '{"meta_version": 1, "parts": "x"}',
                                    '{"meta_version": 1, "parts": {"source": "x"}}',
                                    '{"meta_version": 1, "strategy": "x"}',
                                    "[1, 2]", "{not json"])
def test_a_corrupt_record_rebuilds_our_folder(tmp_path, capsys, record):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "hello world again"}] * 3)
    cfg = write_cfg(tmp_path / "c.yaml", "data:\n  data_path: out\n  source: a.jsonl\n")
    code, _, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    (tmp_path / "out" / "rwkv_plug_dataset.json").write_text(record)
    code, out, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0, err
    assert "its rwkv_plug_dataset.json is unreadable" in out and "dataset built" in out
    code, out, err = run("preload", str(cfg), capsys=capsys)
    assert code == 0 and "dataset reused" in out, err


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_rebuild_reason_names_a_key_a_plugin_added(tmp_path):
    """A plugin overriding `text` with one more option changes the config's key set."""
    from rwkv_plug.builtin_strategies.text import TextStrategy
    from rwkv_plug.core import plugins
    from rwkv_plug.core.hookspecs import hookimpl
    from rwkv_plug.core.interfaces import Option
    from rwkv_plug.data.pipeline import prepare_dataset

    class TextWithSuffix(TextStrategy):
        """Plain text plus a suffix (a test plugin)."""

        options = TextStrategy.options + (Option("text_suffix", "", "Appended text."),)

    class Plugin:
        @hookimpl
        def register_strategies(self):
            return [TextWithSuffix]

    write_jsonl(tmp_path / "a.jsonl", [{"text": "one two three"}, {"text": "four five six"}])
    cfg = {"data_path": "out", "source": "a.jsonl", "test_split": 1}
    logs: list[str] = []
    assert prepare_dataset(dict(cfg), log=logs.append)[1] == "built"
    plugins.current().register(Plugin(), "suffix-plugin")
    try:
        assert prepare_dataset(dict(cfg), log=logs.append)[1] == "built"
    finally:
        plugins.current().unregister("suffix-plugin")
    assert any(m.endswith("data config changed (text_suffix (added))") for m in logs), logs
    assert prepare_dataset(dict(cfg), log=logs.append)[1] == "built"  # plugin gone: the key is removed
    assert any(m.endswith("data config changed (text_suffix (removed))") for m in logs), logs


@pytest.mark.slow
def test_only_the_strategy_and_tokenizer_in_use_are_fingerprinted(tmp_path):
    """Installing or removing a plugin the dataset does not use keeps it; its own strategy's
    options (and a plugin that now claims its columns) rebuild it."""
    from rwkv_plug.core import plugins
    from rwkv_plug.core.hookspecs import hookimpl
    from rwkv_plug.core.interfaces import Option, Sample, Strategy
    from rwkv_plug.data.pipeline import prepare_dataset

    def strategy(column: str, priority: int):
        class Shout(Strategy):
            """Upper-cases one column (a test plugin)."""

            name = f"shout-{column}"
            detect_priority = priority
            options = (Option(f"shout_{column}_volume", 3, "How loud."),)

            @classmethod
            def matches(cls, columns, options):
                return column in columns

            def encode(self, row):
                ids = self.tokenizer.encode(row[column].upper())
                return Sample(ids, [1] * len(ids))

        class Plugin:
            @hookimpl
            def register_strategies(self):
                return [Shout]

        return Plugin()

    write_jsonl(tmp_path / "a.jsonl", [{"text": "one two three"}, {"text": "four five six"}])
    cfg = {"data_path": "out", "source": "a.jsonl", "test_split": 1}
    logs: list[str] = []
    assert prepare_dataset(dict(cfg), log=logs.append)[1] == "built"
    plugins.current().register(strategy("headline", 1), "unrelated")
    try:
        assert prepare_dataset(dict(cfg), log=logs.append)[1] == "reused", logs[-1]
        # keys of strategies that are not in use change nothing either
        other = {**cfg, "multi_column_separator": " | ", "disable_prompt_completion_mask": True,
                 "shout_headline_volume": 11, "world_add_endoftext_token": False}
        assert prepare_dataset(other, log=logs.append)[1] == "reused", logs[-1]
    finally:
        plugins.current().unregister("unrelated")
    assert prepare_dataset(dict(cfg), log=logs.append)[1] == "reused", logs[-1]

    changed = {**cfg, "custom_text_key": "text"}  # an option of `text`, the strategy in use
    assert prepare_dataset(changed, log=logs.append)[1] == "built"
    assert any(m.endswith("data config changed (custom_text_key)") for m in logs), logs

    plugins.current().register(strategy("text", 1), "claims-text")  # now picked for these columns
    try:
        assert prepare_dataset(dict(cfg), log=logs.append)[1] == "built"
    finally:
        plugins.current().unregister("claims-text")
    assert any(m.endswith("the strategy for its columns changed (text -> shout-text)") for m in logs), logs


@pytest.mark.slow
def test_a_new_version_of_the_strategy_plugin_in_use_rebuilds(tmp_path, monkeypatch):
    from rwkv_plug.data import store
    from rwkv_plug.data.pipeline import prepare_dataset

    write_jsonl(tmp_path / "a.jsonl", [{"text": "one two three"}, {"text": "four five six"}])
    cfg = {"data_path": "out", "source": "a.jsonl", "test_split": 1}
    logs: list[str] = []
    assert prepare_dataset(dict(cfg), log=logs.append)[1] == "built"
    real = store.plugin_version
    monkeypatch.setattr(store, "plugin_version", lambda registry, name: (
        {**real(registry, name), "version": "9.9"} if name == "text" else real(registry, name)))
    assert prepare_dataset(dict(cfg), log=logs.append)[1] == "built"
    assert logs[0].endswith("no dataset at " + str(tmp_path / "out") + " yet")
    assert any(m.endswith("the plugin providing strategy 'text' changed") for m in logs), logs
    assert prepare_dataset(dict(cfg), log=logs.append)[1] == "reused"


def test_a_samples_first_token_is_never_counted_or_kept_as_trained(tmp_path):
    """Masks are target-aligned: nothing predicts token 0, so its mask bit trains nothing."""
    import numpy as np

    from rwkv_plug.data.encode import FILTER_NO_MASK, filter_reason
    from rwkv_plug.data.pipeline import prepare_dataset

    assert filter_reason(np.array([5, 6, 7]), np.array([1, 0, 0], np.int8), -1, -1) == FILTER_NO_MASK
    assert filter_reason(np.array([5, 6, 7]), np.array([0, 0, 1], np.int8), -1, -1) == ""
    # rechunked, a document's first token follows the previous separator: it is a target there
    assert filter_reason(np.array([5, 6, 7]), np.array([1, 0, 0], np.int8), -1, -1, first_is_context=False) == ""
    (tmp_path / "a.jsonl").write_text("".join(f'{{"text": "row {i} of some text"}}\n' for i in range(6)))
    lines: list[str] = []
    dd, _ = prepare_dataset({"source": str(tmp_path / "a.jsonl"), "data_path": str(tmp_path / "out"),
                             "tokenizer": "world", "test_split": 2}, log=lines.append)
    tokens = sum(len(ids) for split in dd.values() for ids in split["input_ids"])
    samples = sum(len(split) for split in dd.values())
    assert f"tokens: {tokens}; trained tokens: {tokens - samples} " in "\n".join(lines) + " "


def test_skip_datapath_setup_uses_the_folder_as_it_is_and_preload_still_checks(tmp_path, capsys):
    from rwkv_plug.core.errors import DataError
    from rwkv_plug.data.pipeline import prepare_dataset

    (tmp_path / "a.jsonl").write_text("".join(f'{{"text": "row {i} of some text"}}\n' for i in range(8)))
    cfg = {"source": str(tmp_path / "a.jsonl"), "data_path": str(tmp_path / "out"), "tokenizer": "world",
           "test_split": 2, "processing_max_batch_size": 1000}  # accepted, no effect
    with pytest.raises(DataError, match="data.skip_datapath_setup is true but .* holds no built dataset"):
        prepare_dataset({**cfg, "skip_datapath_setup": True}, log=lambda m: None)
    prepare_dataset(cfg, log=lambda m: None)
    changed = {**cfg, "test_split": 3}  # stale for a checked load
    logs: list[str] = []
    dd, status = prepare_dataset({**changed, "skip_datapath_setup": True}, log=logs.append)
    assert status == "reused" and len(dd["test"]) == 2 and "as it is" in logs[0]
    assert prepare_dataset(changed, log=logs.append)[1] == "built"  # without the key: rebuilt


@pytest.mark.slow
def test_preload_checks_even_with_skip_datapath_setup(tmp_path):
    from conftest import run_cli

    (tmp_path / "a.jsonl").write_text("".join(f'{{"text": "row {i} of some text"}}\n' for i in range(8)))
    (tmp_path / "c.yaml").write_text("data:\n  source: a.jsonl\n  data_path: out\n  tokenizer: world\n"
                                     "  test_split: 2\n  skip_datapath_setup: true\n")
    res = run_cli("preload", "c.yaml", cwd=tmp_path)
    assert res.returncode == 0 and "dataset built" in res.stdout, res.stderr[-2000:]


@pytest.mark.slow
def test_preload_without_a_source_says_it_needs_one_even_with_skip_datapath_setup(tmp_path):
    from conftest import run_cli

    (tmp_path / "c.yaml").write_text("data:\n  data_path: out\n  skip_datapath_setup: true\n")
    res = run_cli("preload", "c.yaml", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == ("error: c.yaml: data.source is required to build data_path (skip_datapath_setup "
                                  "only lets fit and inspect do without it)")
