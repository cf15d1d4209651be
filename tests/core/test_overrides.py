"""Command-line config overrides: `rwkv-plug fit cfg.yaml --trainer.max_steps 20 --model.lr_init 1e-4`."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from fit_project import _error_lines, _project, _with

from rwkv_plug.core.config import CONFIG_SECTIONS
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.core.overrides import apply_overrides, split_overrides

OVERRIDES = ["--trainer.max_steps", "20", "--model.lr_init=1e-4", "--data.data_path", "other/",
             "--trainer.checkpoint.every_n_train_steps", "5", "--model.grad_cp", "true", "--seed_everything", "7"]
IN_FILE = {"trainer": ["  max_steps: 20", "  checkpoint: {every_n_train_steps: 5}"],
           "model": ["  lr_init: 1e-4", "  grad_cp: true"], "data": ["  data_path: other/"]}


def _compared(cfg) -> dict:
    """The validated config without where it came from."""
    out = dataclasses.asdict(cfg)
    for key in ("path", "overrides", "raw"):
        out.pop(key)
    return out


def test_split_reads_yaml_scalars_and_leaves_positionals():
    positional, got = split_overrides(["cfg.yaml", *OVERRIDES], CONFIG_SECTIONS)
    assert positional == ["cfg.yaml"]
    assert got == {"trainer.max_steps": 20, "model.lr_init": "1e-4", "data.data_path": "other/",
                   "trainer.checkpoint.every_n_train_steps": 5, "model.grad_cp": True, "seed_everything": 7}
    assert split_overrides(["--trainer.devices", "[0, 1]", "--model.lr_final", "-1"], CONFIG_SECTIONS)[1] == {
        "trainer.devices": [0, 1], "model.lr_final": -1}


@pytest.mark.parametrize("words, needle", [
    (["--trainer.max_steps"], "--trainer.max_steps needs a value"),
    (["--modle.lr_init", "1"], "unknown option --modle.lr_init. Did you mean 'model'?"),
    (["--verbose"], "unknown option --verbose"),
    (["--trainer.max_steps", "1", "--trainer.max_steps", "2"], "--trainer.max_steps is given twice"),
    (["--trainer..x", "1"], "unknown option --trainer..x"),
    (["--model.lr_init", "[1, 2"], "--model.lr_init '[1, 2' is not a valid YAML value"),
])
def test_malformed_overrides_are_one_clear_error(words, needle):
    with pytest.raises(ConfigError, match="^" + needle.replace(".", r"\.").replace("[", r"\[")):
        split_overrides(words, CONFIG_SECTIONS)


def test_an_override_into_a_value_that_is_no_mapping_is_refused():
    with pytest.raises(ConfigError, match=r"--trainer\.logger\.x: trainer\.logger is 'csv'"):
        apply_overrides({"trainer": {"logger": "csv"}}, {"trainer.logger.x": 1})


def test_overrides_equal_the_same_keys_written_in_the_file(tmp_path, monkeypatch):
    from rwkv_plug.training.config import load_fit_config

    monkeypatch.chdir(tmp_path)
    base = _project(tmp_path)
    (tmp_path / "b").mkdir()
    written = tmp_path / "b" / "cfg.yaml"
    written.write_text(base.read_text().replace("  max_steps: 1\n", "").replace("  lr_init: 1e-2\n", "")
                       .replace("  data_path: datapath/\n", ""))
    for section, lines in IN_FILE.items():
        _with(written, section, *lines)
    written.write_text("seed_everything: 7\n" + written.read_text())
    _, overrides = split_overrides(OVERRIDES, CONFIG_SECTIONS)
    from_cli = load_fit_config(base, overrides=overrides)
    from_file = load_fit_config(written)
    assert _compared(from_cli) == _compared(from_file)
    assert from_cli.trainer.max_steps == 20 and from_cli.model.lr_init == 1e-4 and from_cli.seed == 7
    assert from_cli.checkpoint["every_n_train_steps"] == 5


def test_the_saved_config_holds_the_overrides_and_reads_back_the_same(tmp_path, monkeypatch):
    from rwkv_plug.training.config import load_fit_config
    from rwkv_plug.training.fit import _keep_config

    monkeypatch.chdir(tmp_path)
    cfg = load_fit_config(_project(tmp_path), overrides=split_overrides(OVERRIDES, CONFIG_SECTIONS)[1])

    class NoLoggers:
        loggers: list = []

    _keep_config(NoLoggers(), cfg)
    saved = cfg.root_dir / "config.yaml"
    text = saved.read_text()
    assert "#   --trainer.max_steps 20" in text and "#   --model.lr_init 1e-4" in text
    assert yaml.safe_load(text)["trainer"]["max_steps"] == 20
    again = tmp_path / "again" / "cfg.yaml"  # the same name: trainer.default_root_dir follows it
    again.parent.mkdir()
    again.write_text(text)
    assert _compared(load_fit_config(again)) == _compared(cfg)


def test_bad_override_keys_and_values_are_the_usual_one_line_errors(tmp_path, cli):
    cfg = _project(tmp_path)
    res = cli("fit", str(cfg), "--trainer.max_stepz", "20", "--model.lr_init", "fast", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = _error_lines(res)
    assert len(errors) == 1 and len([l for l in res.stderr.splitlines() if l.strip()]) == 1, res.stderr
    assert "(with --trainer.max_stepz, --model.lr_init): 2 problems" in errors[0]
    assert "unknown key trainer.max_stepz. Did you mean 'max_steps'?" in errors[0]
    assert "model.lr_init must be a number, got 'fast'" in errors[0]
    checked = cli("check", str(cfg), "--trainer.max_epochs", "ten", cwd=tmp_path)
    assert checked.returncode == 1 and "trainer.max_epochs must be an integer" in checked.stderr, checked.stderr
    ok = cli("check", str(cfg), "--trainer.max_steps", "5", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    unknown = cli("fit", "--traner.max_steps", "2", str(cfg), cwd=tmp_path)
    assert unknown.returncode == 2 and "Did you mean 'trainer'?" in _error_lines(unknown)[0]
