"""The ``data:`` section's validation and bad data: one clear message each, right exit code."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli
from rwkv_plug.core.cli import main
from rwkv_plug.core.config import Problems
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.core.interfaces import Sample, Strategy
from rwkv_plug.core.hookspecs import hookimpl
from rwkv_plug.data.options import resolve_data_config



pytestmark = pytest.mark.usefixtures("offline_data")



def resolve(raw: dict) -> dict:
    problems = Problems("cfg.yaml")
    cfg = resolve_data_config(raw, problems)
    problems.raise_if_any()
    return cfg


def run(tmp_path: Path, data: str, capsys, *extra: str) -> tuple[int, str, str]:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("trainer:\n  max_steps: 1\nmodel:\n  ctx_len: 8\ndata:\n"
                   + textwrap.indent(textwrap.dedent(data), "  "), encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["preload", *extra, str(cfg)])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def one_error(err: str) -> bool:
    """Exactly one error line (progress bars aside) and no traceback."""
    return err.count("error: ") == 1 and err.endswith("\n") and "Traceback" not in err


# -- config validation ------------------------------------------------------
def test_seed_defaults():
    cfg = resolve({"data_path": "x", "source": "a.jsonl"})
    assert cfg["tokenizer"] == "neox"
    assert (cfg["min_token_size"], cfg["max_token_size"]) == (-1, -1)
    assert (cfg["test_split"], cfg["test_split_shuffle"]) == (0.01, False)
    assert (cfg["text_rechunk_size"], cfg["text_rechunk_auto"], cfg["text_rechunk_force"]) == (4096, True, False)
    assert cfg["text_rechunk_separator"] == "\n"


def test_alias_and_escapes():
    cfg = resolve({"data_path": "x", "source": "a.jsonl", "test_shuffle": True,
                   "text_rechunk_separator": "\\n\\n"})
    assert cfg["test_split_shuffle"] is True and cfg["text_rechunk_separator"] == "\n\n"


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        resolve({"data_path": "x", "source": "a.jsonl", "min_tokn_size": 3, "is_random_datapack": True,
                 "data_path_storage_options": {"anon": True}, "test_split": "lots", "num_proc": 0,
                 "strategy": "txt", "tokenizer": "binidx"})
    msg = str(exc.value)
    assert "7 problems" in msg
    assert "unknown key data.min_tokn_size. Did you mean 'min_token_size'?" in msg
    assert "data.is_random_datapack is not supported yet: build the pack with `rwkv-plug datapack" in msg
    assert "data.data_path_storage_options is not supported yet" in msg
    assert "data.test_split must be a number, got 'lots'" in msg
    assert "data.num_proc must be an integer of 1 or more, got 0" in msg
    assert "unknown strategy 'txt'. Did you mean 'text'?" in msg
    assert "binidx is not supported yet" in msg


def test_unknown_tokenizer_name_is_a_config_problem_but_paths_and_hub_ids_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        resolve({"data_path": "x", "source": "a.jsonl", "tokenizer": "neoxx", "test_split": "lots"})
    msg = str(exc.value)
    assert "2 problems" in msg  # reported with the rest, before anything is loaded
    assert "data.tokenizer: unknown tokenizer 'neoxx'. Did you mean 'neox'?" in msg
    (tmp_path / "my_tok").mkdir()
    for spec in ("world", "EleutherAI/gpt-neox-20b", "my_tok"):
        assert resolve({"data_path": "x", "source": "a.jsonl", "tokenizer": spec})["tokenizer"] == spec


def test_required_keys_and_builder_without_dir():
    with pytest.raises(ConfigError) as exc:
        resolve({"source": "text"})
    msg = str(exc.value)
    assert "data.data_path is required" in msg and "set data.source_data_dir" in msg


def test_strategy_and_tokenizer_plugins_own_their_keys():
    cfg = resolve({"data_path": "x", "source": "a.jsonl", "custom_text_key": "code",
                   "multi_column_keys": ["a", "b", "c"], "disable_prompt_completion_mask": True})
    assert cfg["custom_text_key"] == "code" and cfg["multi_column_keys"] == ["a", "b", "c"]


# -- bad data through the CLI ------------------------------------------------
def test_unknown_key_exit_code_2(tmp_path, capsys):
    code, _, err = run(tmp_path, "data_path: out\nsource: a.jsonl\ntest_spilt: 2\n", capsys)
    assert code == 2
    assert one_error(err) and "Did you mean 'test_split'?" in err


def test_missing_data_section(tmp_path, capsys):
    (tmp_path / "cfg.yaml").write_text("trainer:\n  max_steps: 1\n")
    with pytest.raises(SystemExit) as exc:
        main(["preload", str(tmp_path / "cfg.yaml")])
    assert exc.value.code == 2 and "no data: section" in capsys.readouterr().err


@pytest.mark.slow
def test_none_and_int_cells_are_skipped_and_counted(tmp_path, capsys):
    rows = [{"text": "good row one"}, {"text": None}, {"text": 5}, {"text": "good row two"},
            {"text": None}, {"other": "x"}, {"text": ""}, {"text": "a"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(tmp_path, "data_path: out\nsource: a.jsonl\ntest_split: 1\n", capsys)
    assert code == 0, err
    assert "rows in: 8 (train 8); rows kept: 2; rows skipped: 6" in out
    at = tmp_path / "a.jsonl"
    assert f"skipped 3: column 'text' is None (e.g. train row 1, 0-based, {at}:2)" in out  # missing = None
    assert f"skipped 1: column 'text' holds int, not text (e.g. train row 2, 0-based, {at}:3)" in out
    assert f"skipped 1: column 'text' is empty (e.g. train row 6, 0-based, {at}:7)" in out
    assert f"skipped 1: 1 token or less (nothing to learn) (e.g. train row 7, 0-based, {at}:8)" in out


@pytest.mark.slow
def test_strict_mode_fails_on_the_bad_row(tmp_path, capsys):
    rows = [{"text": "good row one"}, {"text": "good row two"}, {"text": None}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(tmp_path, "data_path: out\nsource: a.jsonl\nstrict: true\n", capsys)
    assert code == 1
    assert "train row 2 (0-based): column 'text' is None [data.strict is on" in err
    assert not (tmp_path / "out").exists()


def test_empty_file_names_the_file(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = run(tmp_path, "data_path: out\nsource: empty.jsonl\n", capsys)
    assert code == 1 and "empty.jsonl' is empty" in err and "Traceback" not in err


@pytest.mark.parametrize("name, body", [("blank.jsonl", "\n\n\n"), ("header.csv", "text,label\n")])
def test_a_file_without_rows_says_so(tmp_path, capsys, name, body):
    (tmp_path / name).write_text(body)
    code, _, err = run(tmp_path, f"data_path: out\nsource: {name}\n", capsys)
    assert code == 1 and "Traceback" not in err
    assert f"source {tmp_path / name}: the file holds no rows (only blank lines, or only a header)" in err
    assert "Instruction" not in err


def test_no_matching_columns_lists_columns_and_expectations(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("question,answer\nhi,there\nyo,man\n")
    code, _, err = run(tmp_path, "data_path: out\nsource: a.csv\n", capsys)
    assert code == 1 and one_error(err)
    assert "question" in err and "answer" in err and "needs prompt and completion" in err


def test_missing_file_and_unknown_file_type(tmp_path, capsys):
    code, _, err = run(tmp_path, "data_path: out\nsource: ./nope.jsonl\n", capsys)
    assert code == 1 and "'./nope.jsonl' does not exist" in err
    (tmp_path / "a.xyz").write_text("x")
    code, _, err = run(tmp_path, "data_path: out\nsource: a.xyz\n", capsys)
    assert code == 1 and "unknown file type '.xyz'" in err


def test_hub_source_offline_is_one_clear_error(tmp_path, capsys):
    code, _, err = run(tmp_path, "data_path: out\nsource: teven/enwiki_10k\n"
                       "source_dataset_params:\n  language: en\n", capsys)
    assert code == 1 and one_error(err)
    assert "could not load dataset 'teven/enwiki_10k' from the HF hub" in err and "offline" in err


@pytest.mark.slow
def test_streaming_is_refused_with_what_to_do_instead(tmp_path, cli):
    (tmp_path / "a.jsonl").write_text('{"text": "one two three"}\n{"text": "four five six"}\n')
    (tmp_path / "c.yaml").write_text("data:\n  data_path: out\n  source: a.jsonl\n"
                                     "  source_dataset_params: {streaming: true}\n")
    result = cli("preload", "c.yaml")
    assert result.returncode == 2 and one_error(result.stderr), result.stderr
    assert ("c.yaml: data.source_dataset_params.streaming is not supported yet: remove it; the source is "
            "downloaded and read whole") in result.stderr
    assert "no strategy fits" not in result.stderr and not (tmp_path / "out").exists()
    # streaming: false is what happens anyway: accepted
    assert resolve({"data_path": "x", "source": "a.jsonl",
                    "source_dataset_params": {"streaming": False}})["source_dataset_params"] == {"streaming": False}


@pytest.mark.slow
def test_too_few_tokens_to_rechunk(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("just a few words\n")
    code, _, err = run(tmp_path, "data_path: out\nsource: a.txt\n", capsys)
    assert code == 1 and "fewer than text_rechunk_size=4096 tokens" in err


@pytest.mark.slow
def test_test_split_too_large_says_how_far_to_lower_it(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "one two three"}\n{"text": "four five six"}\n')
    code, _, err = run(tmp_path, "data_path: out\nsource: a.jsonl\ntest_split: 2\n", capsys)
    assert code == 1 and one_error(err)
    assert "data.test_split=2 takes 2 test samples, but only 2 samples are left" in err
    assert "set data.test_split to 1 or fewer rows" in err


@pytest.mark.slow
def test_one_sample_left_names_the_skipped_rows_not_test_split(tmp_path, cli):
    rows = [{"text": "one two three"}, {"text": None}, {"text": None}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.yaml").write_text("data:\n  data_path: out\n  source: a.jsonl\n  test_split: 0\n")
    result = cli("preload", "c.yaml")
    assert result.returncode == 1 and one_error(result.stderr)
    assert ("only 1 sample is left to split into train and test (2 of 3 source rows were skipped "
            "(column 'text' is None: 2))") in result.stderr
    assert "add data, or fix the rows that were skipped" in result.stderr
    assert "test_split" not in result.stderr.split("error: ")[1]  # lowering it cannot help


# -- values of every plugin's options -------------------------------------------
@pytest.mark.slow
def test_plugin_option_values_are_checked_all_at_once(tmp_path, cli):
    """Options of strategies and tokenizers that are not in use are checked too."""
    (tmp_path / "a.jsonl").write_text('{"text": "one two three"}\n{"text": "four five six"}\n')
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""\
        data:
          data_path: out
          source: a.jsonl
          tokenizer: neox
          world_add_endoftext_token: 3
          disable_prompt_completion_mask: maybe
          tokenizer_kwargs: 5
          multi_column_train_mask: ['yes']
          custom_text_key: [text]
          test_split: 1e-1
        """))
    result = cli("preload", "c.yaml")
    assert result.returncode == 2 and one_error(result.stderr), result.stderr
    err = result.stderr
    assert "c.yaml: 5 problems" in err
    assert "data.world_add_endoftext_token must be true or false, got 3" in err
    assert "data.disable_prompt_completion_mask must be true or false, got 'maybe'" in err
    assert "data.tokenizer_kwargs must be a mapping or null, got 5" in err
    assert ("data.multi_column_train_mask must be a list with true or false per key, got ['yes']; entry 0 is "
            "'yes', not true or false") in err
    assert "data.custom_text_key must be a string or null, got ['text']" in err
    assert "test_split" not in err  # YAML 1.1 reads 1e-1 as a string; it is the number 0.1
    assert not (tmp_path / "out").exists()


def test_noop_values_of_unsupported_keys_are_accepted():
    cfg = resolve({"data_path": "x", "source": "a.jsonl", "is_random_datapack": False,
                   "data_path_storage_options": None, "skip_datapath_setup": False})
    assert "is_random_datapack" not in cfg and "data_path_storage_options" not in cfg
    for key, value in (("is_random_datapack", True), ("is_random_datapack", 0), ("data_path_storage_options", {})):
        with pytest.raises(ConfigError, match=f"data.{key} is not supported yet"):
            resolve({"data_path": "x", "source": "a.jsonl", key: value})


# -- sources refused or unreadable ------------------------------------------------
@pytest.mark.slow
def test_malformed_json_line_is_named_by_file_and_line(tmp_path):
    (tmp_path / "mal.jsonl").write_text('{"text": "one two"}\n\n{"text": "broken\n{"text": "three"}\n')
    (tmp_path / "c.yaml").write_text("data:\n  data_path: out\n  source: mal.jsonl\n")
    result = run_cli("preload", "c.yaml")
    assert result.returncode == 1 and one_error(result.stderr), result.stderr
    line = result.stderr.split("error: ")[1]
    assert line.startswith(f"{tmp_path / 'mal.jsonl'}:3: not valid JSON at column 10 (unterminated string")
    assert "Failed to load JSON" not in result.stderr  # datasets' own log line is silenced
    assert "DatasetGenerationError" not in result.stderr


@pytest.mark.slow
def test_pickle_sources_and_the_pandas_builder_are_refused(tmp_path, cli):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.pkl").write_bytes(b"not read")
    (tmp_path / "empty").mkdir()
    advice = ("pickle files can run code when loaded; convert it to parquet, e.g. "
              "pandas.read_pickle(...).to_parquet(...)")
    cases = {"x.pkl": (2, f"data.source 'x.pkl': {advice}"),
             "pandas\n  source_data_dir: p": (2, "data.source 'pandas' reads pickle files, which can run code"),
             "p": (1, f"holds x.pkl: {advice}"),
             "empty": (1, "holds no data files; use files ending in .csv, .json, .jsonl, .parquet, .text, .txt")}
    for source, (code, message) in cases.items():
        (tmp_path / "c.yaml").write_text(f"data:\n  data_path: out\n  source: {source}\n")
        result = cli("preload", "c.yaml")
        assert result.returncode == code and one_error(result.stderr), (source, result.stderr)
        assert message in result.stderr, (source, result.stderr)


@pytest.mark.slow
def test_forced_strategy_without_its_columns_fails_before_tokenising(tmp_path, cli):
    import pandas as pd

    pd.DataFrame({"body": ["one two three", "four five six"]}).to_parquet(tmp_path / "b.parquet")
    (tmp_path / "c.yaml").write_text("data:\n  data_path: out\n  source: b.parquet\n"
                                     "  strategy: prompt_completion\n")
    result = cli("preload", "c.yaml")
    assert result.returncode == 1 and one_error(result.stderr), result.stderr
    assert ("data.strategy is 'prompt_completion', which needs prompt and completion, but the "
            "source's columns are body") in result.stderr
    assert "tokenising" not in result.stderr


# -- rows of a folder source are traced to their file ---------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("extra", ["", ', "title": "t"'])  # the same columns in both files, or not
def test_bad_row_of_a_folder_source_names_its_file_and_line(tmp_path, cli, extra):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("".join(f'{{"text": "row {i} of a"{extra}}}\n' for i in range(3)))
    (tmp_path / "d" / "b.jsonl").write_text('{"text": "row 0 of b"}\n{"text": null}\n')
    (tmp_path / "c.yaml").write_text("data:\n  data_path: out\n  source: d\n  test_split: 1\n")
    result = cli("preload", "c.yaml")
    assert result.returncode == 0, result.stderr
    at = f"{tmp_path / 'd' / 'b.jsonl'}:2"
    assert f"skipped 1: column 'text' is None (e.g. train row 4, 0-based, {at})" in result.stdout
    (tmp_path / "c.yaml").write_text("data:\n  data_path: out\n  source: d\n  strict: true\n")
    result = cli("preload", "c.yaml")
    assert result.returncode == 1 and one_error(result.stderr)
    assert f"error: {at}: train row 4 (0-based): column 'text' is None" in result.stderr


@pytest.mark.slow
def test_a_number_among_text_in_a_folder_source_is_refused_not_turned_into_text(tmp_path, cli):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"text": "row of a"}\n')
    (tmp_path / "d" / "b.jsonl").write_text('{"text": "row of b"}\n{"text": null}\n{"text": 12345}\n')
    (tmp_path / "c.yaml").write_text("data:\n  data_path: out\n  source: d\n  test_split: 1\n")
    result = cli("preload", "c.yaml")
    assert result.returncode == 1 and one_error(result.stderr), result.stdout + result.stderr
    assert (f"{tmp_path / 'd' / 'b.jsonl'}:3: column 'text' holds a number, but "
            f"{tmp_path / 'd' / 'a.jsonl'}:1 holds text") in result.stderr


# -- a strategy that raises is reported with the row's file and line ---------------------
class CrashOnBoom(Strategy):
    """Third-party test strategy with a bug: a row whose text holds 'boom' raises."""

    name = "crash_on_boom"

    @classmethod
    def matches(cls, columns, options):
        return False

    def encode(self, row):
        if "boom" in row["text"]:
            raise ZeroDivisionError("division by zero")
        ids = self.tokenizer.encode(row["text"])
        return Sample(ids, [1] * len(ids))


class ListOnBoom(CrashOnBoom):
    """Third-party test strategy with another bug: a list instead of a Sample."""

    name = "list_on_boom"

    def encode(self, row):
        return [1, 2, 3] if "boom" in row["text"] else super().encode(row.copy() | {"text": "fine"})


class CrashPlugin:
    @hookimpl
    def register_strategies(self):
        return [CrashOnBoom, ListOnBoom]


@pytest.mark.slow
@pytest.mark.parametrize("rows_per_file", [3, 4000], ids=["in-process", "worker-processes"])
def test_a_strategy_that_raises_names_the_rows_file_and_line(tmp_path, rows_per_file):
    from rwkv_plug.core import plugins
    from rwkv_plug.core.errors import DataError
    from rwkv_plug.data.pipeline import prepare_dataset

    plugins.current().register(CrashPlugin(), name="crash")
    (tmp_path / "d").mkdir()
    filler = " and some more words to make the file bigger" * 6
    for name in ("a", "b"):
        lines = [f"row {i} of {name}{filler}" for i in range(rows_per_file)]
        if name == "b":
            lines[1] = "boom"
        (tmp_path / "d" / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    cfg = {"source": str(tmp_path / "d"), "data_path": str(tmp_path / "out"), "strategy": "crash_on_boom",
           "num_proc": 2}
    with pytest.raises(DataError) as info:
        prepare_dataset(cfg, log=lambda _msg: None)
    assert str(info.value) == (f"{tmp_path / 'd' / 'b.jsonl'}:2: train row {rows_per_file + 1} (0-based): strategy "
                               "'crash_on_boom' failed with ZeroDivisionError: division by zero")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_strategy_that_returns_no_sample_is_named_with_the_row(tmp_path):
    from rwkv_plug.core import plugins
    from rwkv_plug.core.errors import DataError
    from rwkv_plug.data.pipeline import prepare_dataset

    plugins.current().register(CrashPlugin(), name="crash")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["one", "two", "boom"]))
    cfg = {"source": str(tmp_path / "a.jsonl"), "data_path": str(tmp_path / "out"), "strategy": "list_on_boom"}
    with pytest.raises(DataError) as info:
        prepare_dataset(cfg, log=lambda _msg: None)
    assert str(info.value) == (f"{tmp_path / 'a.jsonl'}:3: train row 2 (0-based): strategy 'list_on_boom' "
                               "returned list, not a Sample(input_ids, loss_mask)")
