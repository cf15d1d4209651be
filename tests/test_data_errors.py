"""The ``data:`` section's validation and bad data: one clear message each, right exit code."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from rwkv_plug.core.cli import main
from rwkv_plug.core.config import Problems
from rwkv_plug.core.errors import ConfigError
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
        resolve({"data_path": "x", "source": "a.jsonl", "min_tokn_size": 3, "packing_enable": True,
                 "conversation_format": "iopairs", "test_split": "lots", "num_proc": 0,
                 "strategy": "txt", "tokenizer": "binidx"})
    msg = str(exc.value)
    assert "7 problems" in msg
    assert "unknown key data.min_tokn_size. Did you mean 'min_token_size'?" in msg
    assert "data.packing_enable is not supported yet: packing comes" in msg
    assert "data.conversation_format is not supported yet" in msg
    assert "data.test_split must be" in msg and "data.num_proc must be" in msg
    assert "unknown strategy 'txt'. Did you mean 'text'?" in msg
    assert "binidx is not supported yet" in msg


def test_required_keys_and_builder_without_dir():
    with pytest.raises(ConfigError) as exc:
        resolve({"source": "text"})
    msg = str(exc.value)
    assert "data.data_path is required" in msg and "set data.source_data_dir" in msg


def test_strategy_and_tokenizer_plugins_own_their_keys():
    cfg = resolve({"data_path": "x", "source": "a.jsonl", "custom_text_key": "code",
                   "multi_column_keys": ["a", "b"], "disable_prompt_completion_mask": True})
    assert cfg["custom_text_key"] == "code" and cfg["multi_column_keys"] == ["a", "b"]


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


def test_none_and_int_cells_are_skipped_and_counted(tmp_path, capsys):
    rows = [{"text": "good row one"}, {"text": None}, {"text": 5}, {"text": "good row two"},
            {"text": None}, {"other": "x"}, {"text": ""}, {"text": "a"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(tmp_path, "data_path: out\nsource: a.jsonl\ntest_split: 1\n", capsys)
    assert code == 0, err
    assert "rows in: 8 (train 8); rows kept: 2; rows skipped: 6" in out
    assert "skipped 3: column 'text' is None (e.g. train row 1, 0-based)" in out  # missing = None in jsonl
    assert "skipped 1: column 'text' holds int, not text (e.g. train row 2, 0-based)" in out
    assert "skipped 1: column 'text' is empty (e.g. train row 6, 0-based)" in out
    assert "skipped 1: 1 token or less (nothing to learn) (e.g. train row 7, 0-based)" in out


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


def test_too_few_tokens_to_rechunk(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("just a few words\n")
    code, _, err = run(tmp_path, "data_path: out\nsource: a.txt\n", capsys)
    assert code == 1 and "fewer than text_rechunk_size=4096 tokens" in err


def test_test_split_too_large(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "one two three"}\n{"text": "four five six"}\n')
    code, _, err = run(tmp_path, "data_path: out\nsource: a.jsonl\ntest_split: 2\n", capsys)
    assert code == 1 and "nothing would be left to train on" in err
