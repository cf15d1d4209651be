"""The plugin manager and registries: isolation, overrides, conflicts, strictness."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from rwkv_plug.core import plugins
from rwkv_plug.core.errors import PluginError, UnknownNameError
from rwkv_plug.core.hookspecs import hookimpl
from rwkv_plug.core.interfaces import Sample, Strategy
from rwkv_plug.core.registry import Registry

from conftest import run_cli


class ShoutStrategy(Strategy):
    """Upper-cases the text column (test double)."""

    name = "shout"

    def encode(self, row):
        return Sample(self.tokenizer.encode(row["text"].upper()), [1] * len(row["text"]))


class TextOverride(ShoutStrategy):
    """A third-party replacement for the built-in text strategy."""

    name = "text"


class ShoutPlugin:
    @hookimpl
    def register_strategies(self):
        return [ShoutStrategy]


def test_builtin_strategies_are_registered():
    names = plugins.strategies().names()
    assert {"text", "prompt_completion", "multi_column"} <= set(names)


def test_registered_plugin_contributes_and_unregisters():
    p = plugins.current()
    p.register(ShoutPlugin(), name="shout-plugin")
    entry = plugins.strategies().entry("shout")
    assert entry.cls is ShoutStrategy and entry.plugin == "shout-plugin"
    p.unregister("shout-plugin")
    assert "shout" not in plugins.strategies()


def test_third_party_override_is_recorded():
    class Override:
        @hookimpl
        def register_strategies(self):
            return [TextOverride]

    plugins.current().register(Override(), name="override-plugin")
    entry = plugins.strategies().entry("text")
    assert entry.cls is TextOverride
    assert entry.plugin == "override-plugin"
    assert entry.overrides == ["rwkv_plug.builtin_strategies"]


def test_two_third_party_plugins_claiming_one_name_is_an_error():
    class A:
        @hookimpl
        def register_strategies(self):
            return [ShoutStrategy]

    class Other(ShoutStrategy):
        """Another shout."""

    class B:
        @hookimpl
        def register_strategies(self):
            return [Other]

    p = plugins.current()
    p.register(A(), name="plugin-a")
    p.register(B(), name="plugin-b")
    with pytest.raises(PluginError, match="plugin-a.*plugin-b|plugin-b.*plugin-a"):
        plugins.strategies()


def test_unknown_name_lists_available_and_suggests():
    with pytest.raises(UnknownNameError) as exc:
        plugins.strategies().get("promt_completion")
    msg = str(exc.value)
    assert "Did you mean 'prompt_completion'?" in msg
    assert "multi_column" in msg and "text" in msg


def test_class_without_name_is_rejected():
    reg = Registry("strategy")
    with pytest.raises(PluginError, match="without a string 'name'"):
        reg.add(type("Nameless", (), {}), "p", builtin=False)


def test_hook_that_raises_is_isolated(capsys):
    class Broken:
        @hookimpl
        def register_strategies(self):
            raise RuntimeError("boom")

    p = plugins.current()
    p.register(Broken(), name="broken-plugin")
    assert "text" in plugins.strategies()  # the others keep working
    err = capsys.readouterr().err
    assert "broken-plugin" in err and "boom" in err
    assert p.info["broken-plugin"].error.endswith("RuntimeError: boom")


def test_hook_that_raises_is_an_error_in_strict_mode():
    class Broken:
        @hookimpl
        def register_strategies(self):
            raise RuntimeError("boom")

    p = plugins.configure("none", strict=True)
    p.register(Broken(), name="broken-plugin")
    with pytest.raises(PluginError, match="broken-plugin.*strict"):
        p.registries()


def test_register_commands_hook_adds_a_command():
    import click
    from click.testing import CliRunner

    class Cmd:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("hello-plugin")
            def hello():
                """Say hello."""
                click.echo("hello from a plugin")

    from rwkv_plug.core.cli import PluginGroup

    group = PluginGroup("test-cli")
    p = plugins.current()
    p.register(Cmd(), name="cmd-plugin")
    p.add_commands(group)
    result = CliRunner().invoke(group, ["hello-plugin"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


# -- real entry points, discovered from an installed distribution ----------
def _fake_distribution(root: Path, name: str, module_source: str) -> None:
    """Write a minimal installed distribution with one ``rwkv_plug`` entry point."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[rwkv_plug]\n{name} = {name}\n")


@pytest.fixture
def broken_site(tmp_path):
    _fake_distribution(tmp_path, "brokenplug", "raise ImportError('this plugin is broken')\n")
    _fake_distribution(
        tmp_path,
        "goodplug",
        """
        from rwkv_plug.core.hookspecs import hookimpl
        from rwkv_plug.core.interfaces import Strategy

        class Reverse(Strategy):
            '''Reverses the text column before tokenizing.'''
            name = "reverse"
            def encode(self, row):
                raise NotImplementedError

        @hookimpl
        def register_strategies():
            return [Reverse]
        """,
    )
    return {"PYTHONPATH": str(tmp_path), "RWKV_PLUG_PLUGINS": "all"}


def test_broken_entry_point_does_not_break_listing(broken_site):
    result = run_cli("list-strategies", env=broken_site)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert {"reverse", "text", "prompt_completion", "multi_column"} <= set(names)
    assert "goodplug" in result.stdout
    warning = [line for line in result.stderr.splitlines() if "brokenplug" in line]
    assert len(warning) == 1 and "this plugin is broken" in warning[0]


@pytest.mark.slow
def test_plugins_command_lists_broken_plugin_with_error(broken_site):
    result = run_cli("plugins", env=broken_site)
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert "this plugin is broken" in listed["brokenplug"]["error"]
    assert listed["brokenplug"]["distribution"] == "brokenplug"
    assert listed["goodplug"]["error"] is None
    assert listed["rwkv_plug.builtin_strategies"]["builtin"] is True


def test_strict_mode_turns_broken_plugin_into_an_error(broken_site):
    result = run_cli("--strict-plugins", "list-strategies", env=broken_site)
    assert result.returncode != 0
    assert "brokenplug" in result.stderr and "Traceback" not in result.stderr
    env = {**broken_site, "RWKV_PLUG_STRICT_PLUGINS": "1"}
    assert run_cli("list-strategies", env=env).returncode != 0


def test_selected_plugins_only(broken_site):
    none = run_cli("--plugins", "none", "list-strategies", env=broken_site)
    assert none.returncode == 0 and "reverse" not in none.stdout and "brokenplug" not in none.stderr
    only = run_cli("list-strategies", env={**broken_site, "RWKV_PLUG_PLUGINS": "goodplug"})
    assert "reverse" in only.stdout and "brokenplug" not in only.stderr



def test_asking_for_a_plugin_that_is_not_installed_says_so(broken_site):
    typo = run_cli("--plugins", "goodplgu", "list-strategies", env=broken_site)
    assert typo.returncode == 0 and "reverse" not in typo.stdout
    warning = [line for line in typo.stderr.splitlines() if "goodplgu" in line]
    assert len(warning) == 1, typo.stderr
    assert "is not installed" in warning[0] and "Did you mean 'goodplug'?" in warning[0]
    assert "brokenplug" in warning[0]  # the installed names are listed
    strict = run_cli("--strict-plugins", "list-strategies", env={**broken_site, "RWKV_PLUG_PLUGINS": "nosuch"})
    assert strict.returncode != 0 and "'nosuch'" in strict.stderr and "Traceback" not in strict.stderr

@pytest.fixture
def misspelled_site(tmp_path):
    """An installed plugin whose strategies hook is misspelled; its tokenizer hook is right."""
    _fake_distribution(
        tmp_path,
        "typoplug",
        """
        from rwkv_plug import Strategy, Tokenizer, hookimpl

        class Loud(Strategy):
            '''Never registered: the hook that returns it is misspelled.'''
            name = "loud"
            def encode(self, row):
                raise NotImplementedError

        class Quiet(Tokenizer):
            '''Never registered either: a broken plugin contributes nothing.'''
            name = "quiet"

        @hookimpl
        def register_strategy():
            return [Loud]

        @hookimpl
        def register_tokenizers():
            return [Quiet]
        """,
    )
    return {"PYTHONPATH": str(tmp_path), "RWKV_PLUG_PLUGINS": "all"}


@pytest.mark.slow
def test_a_misspelled_hook_makes_the_plugin_broken_with_the_hook_named(misspelled_site):
    listed = run_cli("plugins", env=misspelled_site)
    assert listed.returncode == 0, listed.stderr
    info = {p["name"]: p for p in json.loads(listed.stdout)}["typoplug"]
    assert info["error"].startswith("implements unknown hook 'register_strategy'. "
                                    "Did you mean 'register_strategies'? Hooks are: register_commands, "), info
    warning = [line for line in listed.stderr.splitlines() if "typoplug" in line]
    assert warning == [f"warning: plugin 'typoplug' (distribution typoplug) {info['error']}; skipped"]
    strategies = run_cli("list-strategies", env=misspelled_site)
    tokenizers = run_cli("list-tokenizers", env=misspelled_site)
    assert strategies.returncode == 0 and "loud" not in strategies.stdout and "text" in strategies.stdout
    assert tokenizers.returncode == 0 and "quiet" not in tokenizers.stdout  # its good hook is skipped too
    strict = run_cli("--strict-plugins", "list-strategies", env=misspelled_site)
    assert strict.returncode != 0 and "unknown hook 'register_strategy'" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_registering_a_misspelled_hook_in_process_is_an_error_and_leaves_nothing_behind():
    class Typo:
        @hookimpl
        def register_kernel(self):
            return []

    p = plugins.current()
    with pytest.raises(PluginError, match="plugin 'typo' implements unknown hook 'register_kernel'. "
                                          "Did you mean 'register_kernels'?"):
        p.register(Typo(), name="typo")
    assert "typo" not in p.info and p.pm.get_plugin("typo") is None
    p.pm.check_pending()  # the set is clean again
    p.register(ShoutPlugin(), name="shout-plugin")  # and later plugins register as usual
    assert "shout" in plugins.strategies()


def test_tokenizer_kernel_and_model_hooks_fill_their_registries():
    from rwkv_plug.core.interfaces import Kernel, ModelArch, Tokenizer

    class CharTok(Tokenizer):
        """One id per character (test double)."""

        name = "chars"

        @classmethod
        def load(cls, spec, options):
            return cls()

        vocab_size = 256

        def encode(self, text):
            return [ord(c) % 256 for c in text]

        def decode(self, ids):
            return "".join(map(chr, ids))

        def fingerprint(self):
            return "chars"

    class NeverKernel(Kernel):
        """A kernel that is never available (test double)."""

        name = "never"

        @classmethod
        def availability(cls):
            return False, "needs a quantum computer"

        def wkv5(self, r, k, v, w, u, s0):
            raise AssertionError("unreachable")

    class ToyArch(ModelArch):
        """Recognises checkpoints holding a 'toy' key (test double)."""

        name = "toy"

        @classmethod
        def detect(cls, state_dict):
            return "toy" in state_dict

        @classmethod
        def from_state_dict(cls, state_dict, **options):
            return ("toy model", dict(state_dict))

    class AllKinds:
        @hookimpl
        def register_tokenizers(self):
            return [CharTok]

        @hookimpl
        def register_kernels(self):
            return [NeverKernel]

        @hookimpl
        def register_models(self):
            return [ToyArch]

    plugins.current().register(AllKinds(), name="all-kinds")
    assert plugins.tokenizers().get("chars").load("chars", {}).encode("A") == [65]
    assert plugins.kernels().get("never").availability() == (False, "needs a quantum computer")
    assert plugins.models().get("toy").detect({"toy": 1})
    from rwkv_plug.models import load_model

    assert load_model({"toy": 1}) == ("toy model", {"toy": 1})  # detection goes through the registry

    from click.testing import CliRunner

    from rwkv_plug.core.cli import cli

    out = CliRunner().invoke(cli, ["list-kernels"]).output
    line = next(line for line in out.splitlines() if line.startswith("never"))
    assert "unavailable (needs a quantum computer)" in line and "all-kinds" in line


def test_strict_plugins_variable_takes_on_or_off_and_refuses_anything_else():
    from rwkv_plug.core.env import settings
    from rwkv_plug.core.errors import ConfigError

    assert settings({"RWKV_PLUG_STRICT_PLUGINS": "1"}).strict_plugins is True
    assert settings({"RWKV_PLUG_STRICT_PLUGINS": "yes"}).strict_plugins is True
    assert settings({"RWKV_PLUG_STRICT_PLUGINS": "0"}).strict_plugins is False
    assert settings({}).strict_plugins is False
    with pytest.raises(ConfigError, match="RWKV_PLUG_STRICT_PLUGINS must be 1 or 0, got 'maybe'"):
        settings({"RWKV_PLUG_STRICT_PLUGINS": "maybe"})
