"""``rwkv-plug check``: every config the project ships validates; a bad one fails with its lines."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from rwkv_plug.training.check import check_config

from conftest import REPO, run_cli
from data_helpers import SEED_CONFIGS, seed_config

pytestmark = pytest.mark.usefixtures("offline_data")  # cwd: tmp_path; the hub offline

_MISSING_MODEL = re.compile(r"^model\.load_model '.*' does not exist .*`rwkv-plug init-model`$")


def _examples_copy(tmp_path: Path) -> Path:
    """examples/ as a fresh clone has it: without what `make demo` wrote into out/."""
    return Path(shutil.copytree(REPO / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("out")))


def test_every_shipped_example_validates_from_its_folder_with_only_the_model_to_make(tmp_path, monkeypatch):
    folder = _examples_copy(tmp_path)
    monkeypatch.chdir(folder)
    configs = sorted(folder.glob("*.yaml"))
    assert configs
    for cfg in configs:
        report = check_config(cfg.name)
        assert report.ok, (cfg.name, report.errors)
        # only what init-model makes is missing, and only as a warning
        assert all(_MISSING_MODEL.match(w) for w in report.warnings), report.warnings
        model = Path(yaml.safe_load(cfg.read_text())["model"]["load_model"])
        model.parent.mkdir(parents=True, exist_ok=True)
        model.write_bytes(b"")  # check reads nothing from it: existence is the check
        strict = check_config(cfg.name, strict=True)
        assert strict.ok and strict.warnings == [], (cfg.name, strict.errors)
    assert not (folder / "out" / "demo" / "datapath").exists()  # nothing was built


@pytest.mark.slow
def test_the_demo_config_checks_as_the_project_hook_runs_it(tmp_path):
    folder = _examples_copy(tmp_path)
    result = run_cli("check", "demo.yaml", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: demo.yaml: model out/demo/L2-D128-world-init.pth")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "model.load_model" in warnings[0] and "--strict" in warnings[0]
    strict = run_cli("check", "demo.yaml", "--strict", cwd=folder)
    assert strict.returncode == 1 and strict.stdout == ""
    assert [line for line in strict.stderr.splitlines() if line.startswith("error:")] == [
        f"error: demo.yaml: {w.removeprefix('warning: demo.yaml: ').split(' (fit needs it')[0]}" for w in warnings]


def _doc_configs() -> list[tuple[str, str]]:
    """Every ```yaml block in README.md and docs/*.md that is a whole fit config."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)):
            parsed = yaml.safe_load(block)
            if isinstance(parsed, dict) and {"model", "data"} <= set(parsed):
                found.append((f"{doc.name}#{i}", block))
    return found


def test_every_config_in_the_docs_and_the_seed_notebook_validates(tmp_path):
    configs = _doc_configs() + [(name, seed_config(name)) for name in SEED_CONFIGS]
    assert any(name.startswith("README.md") for name, _ in configs)
    for name, text in configs:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(text)
        report = check_config(cfg)
        assert report.ok, (name, report.errors)
        assert all(_MISSING_MODEL.match(w) for w in report.warnings), (name, report.warnings)


def _project(tmp_path: Path, model: str, data: str) -> Path:
    (tmp_path / "m.pth").write_bytes(b"")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n{textwrap.indent(textwrap.dedent(model), '  ')}\n"
                   f"data:\n{textwrap.indent(textwrap.dedent(data), '  ')}\n")
    return cfg


def test_a_bad_config_gets_one_error_line_per_problem_and_exit_1(tmp_path, cli):
    cfg = _project(tmp_path, """\
        load_model: m.pth
        lr_init: 3e-4
        ctx_lenn: 128
        """, """\
        data_path: out/
        source: ./nope.jsonl
        tokenizer: neoxx
        """)
    result = cli("check", cfg.name, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "error: cfg.yaml: unknown key model.ctx_lenn. Did you mean 'ctx_len'?", lines
    assert lines[1].startswith("error: cfg.yaml: data.tokenizer: ") and "neoxx" in lines[1], lines
    # fit would name the missing source only after the rest is fixed; check says it now
    assert lines[2:] == [f"error: cfg.yaml: data.source './nope.jsonl' does not exist (looked in {tmp_path})"]
    assert not (tmp_path / "out").exists()


def test_a_missing_or_broken_file_is_one_error_line(tmp_path):
    missing = run_cli("check", "nope.yaml", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == ["error: nope.yaml: config file 'nope.yaml' does not exist"]
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    broken = run_cli("check", "bad.yaml", cwd=tmp_path)
    assert broken.returncode == 1 and len(broken.stderr.splitlines()) == 1
    assert "line 1 is not valid YAML" in broken.stderr


def test_resume_and_a_prebuilt_data_path_are_checked_without_reading_them(tmp_path):
    cfg = _project(tmp_path, "load_model: m.pth\nlr_init: 3e-4\n",
                   "data_path: built/\nskip_datapath_setup: true\ntokenizer: neox\n")
    report = check_config(cfg, resume="runs/cfg/checkpoints/last.ckpt")
    assert report.errors == ["--resume runs/cfg/checkpoints/last.ckpt: no such checkpoint file (use 'auto' to "
                             f"pick the newest in {Path('runs/cfg/checkpoints')})"]
    assert report.warnings == ["data.data_path 'built/' does not exist, and skip_datapath_setup uses it as it "
                               "is; build it with `rwkv-plug preload` or `rwkv-plug datapack`"]
    assert check_config(cfg, resume="auto").ok  # auto: fresh when there is none, as fit does
    (tmp_path / "built").mkdir()
    (tmp_path / "last.ckpt").write_bytes(b"")
    report = check_config(cfg, resume="last.ckpt", strict=True)
    assert report.ok and report.warnings == [], report.errors
