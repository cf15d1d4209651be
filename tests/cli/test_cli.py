"""The command line: version, help, listing, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rwkv_plug import __version__
from rwkv_plug.core.cli import cli

from conftest import run_cli


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    commands = cli.list_commands(None)
    expected = {"list-strategies", "list-tokenizers", "list-kernels", "list-models", "plugins"}
    assert expected <= set(commands)
    for name in commands:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


@pytest.mark.slow
def test_list_commands_show_name_plugin_description():
    result = run_cli("list-strategies")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert {"text", "prompt_completion", "multi_column"} <= set(rows)
    assert "rwkv_plug.builtin_strategies" in rows["text"]
    kernels = run_cli("list-kernels")
    assert kernels.returncode == 0
    assert any(line.startswith("torch") and "available" in line for line in kernels.stdout.splitlines())


def test_user_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = run_cli("plugins", "--plugins", "none")  # a bad option placement is a usage error
    assert result.returncode != 0 and "Traceback" not in result.stderr
    bad = run_cli("--plugins", "none", "no-such-command")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "No such command" in bad.stderr
    assert not missing.exists()


def test_import_is_cheap_and_silent():
    code = (
        "import sys, rwkv_plug, rwkv_plug.core.cli, rwkv_plug.core.plugins as p\n"
        "heavy = [m for m in ('torch', 'triton', 'transformers', 'datasets', 'lightning') if m in sys.modules]\n"
        "assert p._current is None, 'plugins loaded at import'\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "HEAVY=" and out.stderr == ""


@pytest.mark.parametrize("command", ["list-strategies", "list-tokenizers"])
def test_listing_strategies_or_tokenizers_imports_no_heavy_library(command):
    code = (
        "import sys\nfrom rwkv_plug.core.cli import main\n"
        f"try:\n    main([{command!r}])\nexcept SystemExit as e:\n    assert not e.code\n"
        "heavy = [m for m in ('torch', 'triton', 'transformers', 'datasets', 'lightning') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "RWKV_PLUG_PLUGINS": "none"})
    assert out.stdout.strip().splitlines()[-1] == "HEAVY=", out.stdout + out.stderr


def test_importing_the_core_reads_no_environment_variable():
    code = (
        "import os, pkgutil, importlib\n"
        "class Watch(dict):\n"
        "    read = []\n"
        "    def __getitem__(self, k): Watch.read.append(k); return super().__getitem__(k)\n"
        "    def get(self, k, d=None): Watch.read.append(k); return super().get(k, d)\n"
        "    def __contains__(self, k): Watch.read.append(k); return super().__contains__(k)\n"
        "os.environ = Watch(os.environ)\n"
        "import rwkv_plug.core\n"
        "for m in pkgutil.iter_modules(rwkv_plug.core.__path__): importlib.import_module('rwkv_plug.core.' + m.name)\n"
        "print('READ=' + ','.join(Watch.read))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    read = set(out.stdout.strip().removeprefix("READ=").split(",")) - {""}
    # click's option decorators look up gettext's locale variables; those are not ours
    assert read - {"LANGUAGE", "LANG", "LC_ALL", "LC_MESSAGES"} == set(), out.stdout


@pytest.mark.slow
def test_debug_flag_shows_the_traceback(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  data_pth: x\n")
    plain = run_cli("preload", str(cfg))
    assert plain.returncode == 2
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and "Did you mean 'data_path'?" in lines[0] and str(cfg) in lines[0]
    for args in (["--debug", "preload", str(cfg)], ["preload", str(cfg), "--debug"]):  # before or after
        debug = run_cli(*args)
        assert debug.returncode == 2 and "Traceback" in debug.stderr, args
    assert "--debug" not in run_cli("preload", "--help").stdout  # hidden: documented once, on the group


def test_a_ctrl_c_that_a_library_wrapped_is_reported_as_interrupted(monkeypatch, capsys):
    from rwkv_plug.core import cli as cli_module

    def interrupted_inside_a_worker_pool(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise TimeoutError()  # the interrupt stays as __context__, as worker pools leave it

    monkeypatch.setattr(cli_module.cli, "main", interrupted_inside_a_worker_pool)
    with pytest.raises(SystemExit) as exc:
        cli_module.main(["preload", "cfg.yaml"])
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_a_stop_the_user_asked_for_is_not_printed_as_an_error(monkeypatch, capsys):
    from rwkv_plug.core import cli as cli_module
    from rwkv_plug.core.errors import Interrupted

    def stopped(*args, **kwargs):
        raise Interrupted("training interrupted at step 3; checkpoints are in runs/x/checkpoints")

    monkeypatch.setattr(cli_module.cli, "main", stopped)
    with pytest.raises(SystemExit) as exc:
        cli_module.main(["fit", "cfg.yaml"])
    assert exc.value.code == 130
    assert capsys.readouterr().err == "training interrupted at step 3; checkpoints are in runs/x/checkpoints\n"


UNKNOWN_TRAINR = ("unknown section 'trainr'. Did you mean 'trainer'? "
                  "(a config has trainer, model, data, seed_everything)")


@pytest.mark.parametrize("command", ["preload", "inspect", "fit"])
def test_every_command_reading_a_config_reports_an_unknown_section(tmp_path, capsys, monkeypatch, command):
    """A `trainr:` typo is one error line, worded the same by each command, and nothing is built."""
    from rwkv_plug.core.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text('{"text": "one two three"}\n{"text": "four five six"}\n')
    (tmp_path / "cfg.yaml").write_text(
        "trainr:\n  max_steps: 1\nmodel:\n  load_model: m.pth\n  lr_init: 0.001\n"
        "data:\n  data_path: out\n  source: a.jsonl\n  tokenizer: world\n")
    with pytest.raises(SystemExit) as exc:
        main([command, "cfg.yaml"])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cfg.yaml: ") and UNKNOWN_TRAINR in lines[0], err
    assert not (tmp_path / "out").exists()


def test_a_datapack_file_reports_an_unknown_section_the_same_way(tmp_path, capsys):
    from rwkv_plug.core.cli import main

    (tmp_path / "pack.yaml").write_text(
        f"datapack:\n  data_path: {tmp_path / 'mix'}\ndefualt:\n  tokenizer: world\ndataset: []\n")
    with pytest.raises(SystemExit) as exc:
        main(["datapack", str(tmp_path / "pack.yaml")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert ("unknown section 'defualt'. Did you mean 'default'? (a datapack file has datapack, default, "
            "dataset)") in err
