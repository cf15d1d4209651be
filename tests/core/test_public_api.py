"""The public plugin API: ``from rwkv_plug import ...`` (lazy, no torch) and ``rwkv_plug.testing``."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

import rwkv_plug
from rwkv_plug.core import plugins
from rwkv_plug.core.errors import ConfigError, PluginError
from rwkv_plug.testing import ByteTokenizer, data_config_problems, detect_strategy, registered_plugin
from rwkv_plug.testing import strategy_options

from conftest import REPO

PUBLIC = [n for n in rwkv_plug.__all__ if n != "__version__"]


def test_the_public_names_are_the_core_objects_themselves():
    from rwkv_plug.builtin_strategies.text import TextStrategy
    from rwkv_plug.core import errors, hookspecs, interfaces

    assert rwkv_plug.hookimpl is hookspecs.hookimpl
    for name in ("Strategy", "Tokenizer", "Kernel", "KernelCaps", "ModelArch", "Option", "Sample", "BadRow",
                 "FlatSamples"):
        assert getattr(rwkv_plug, name) is getattr(interfaces, name)
    assert rwkv_plug.ConfigError is errors.ConfigError and rwkv_plug.TextStrategy is TextStrategy
    assert set(PUBLIC) <= set(dir(rwkv_plug))
    with pytest.raises(AttributeError, match="no attribute 'Stratgy'"):
        rwkv_plug.Stratgy  # noqa: B018


def test_importing_the_public_api_and_its_testing_helpers_loads_no_torch():
    code = (
        "import sys, rwkv_plug, rwkv_plug.testing\n"
        "values = [getattr(rwkv_plug, n) for n in rwkv_plug.__all__]\n"
        "from rwkv_plug import hookimpl, Strategy, Tokenizer, Kernel, KernelCaps, ModelArch, Option, Sample, BadRow\n"
        "rwkv_plug.testing.ByteTokenizer().encode('x')\n"
        "heavy = [m for m in ('torch', 'lightning', 'datasets', 'transformers', 'triton') if m in sys.modules]\n"
        "print(len(values), 'HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(rwkv_plug.__all__)), "HEAVY="], out.stdout + out.stderr


def test_byte_tokenizer_is_one_id_per_utf8_byte():
    tok = ByteTokenizer()
    assert tok.encode("aé") == [97, 0xC3, 0xA9] and tok.vocab_size == 256
    assert tok.decode(tok.encode("héllo 🙂")) == "héllo 🙂"
    assert tok.decode([0xC3]) == "\ufffd"  # half a character, as a masked subset may cut one


class _Shout(rwkv_plug.Strategy):
    """Upper-cases the text column (test double)."""

    name = "shout"
    options = (rwkv_plug.Option("shout_suffix", "!", "Appended to each row.", escapes=True),
               rwkv_plug.Option("shout_times", 1, "Repeats."))

    @classmethod
    def matches(cls, columns, options):
        return "shout" in columns

    @classmethod
    def expects(cls, options):
        return "needs a shout column"

    def encode(self, row):
        ids = self.tokenizer.encode((row["shout"].upper() + self.opts["shout_suffix"]) * self.opts["shout_times"])
        return rwkv_plug.Sample(ids, [1] * len(ids))


class _ShoutPlugin:
    @rwkv_plug.hookimpl
    def register_strategies(self):
        return [_Shout]


def test_registered_plugin_is_there_for_the_block_only_and_the_previous_set_comes_back():
    before = plugins.current()
    with registered_plugin(_ShoutPlugin(), name="shout-plugin") as p:
        assert plugins.current() is p and p is not before
        assert plugins.strategies().entry("shout").plugin == "shout-plugin"
        assert "text" in plugins.strategies()  # with the built-ins
    assert plugins.current() is before and "shout" not in plugins.strategies()
    with pytest.raises(RuntimeError, match="inside"):
        with registered_plugin(_ShoutPlugin()):
            raise RuntimeError("inside")
    assert plugins.current() is before


def test_registered_plugin_refuses_a_misspelled_hook_and_restores_the_set():
    plugins.reset()

    class Typo:
        @rwkv_plug.hookimpl
        def register_strategy(self):  # one letter short of register_strategies
            return [_Shout]

    with pytest.raises(PluginError, match="plugin 'typo' implements unknown hook 'register_strategy'. "
                                          "Did you mean 'register_strategies'?"):
        with registered_plugin(Typo(), name="typo"):
            pass
    assert plugins.configured() is None


def test_strategy_options_fill_defaults_and_check_values_as_a_config_does():
    assert strategy_options(_Shout) == {"shout_suffix": "!", "shout_times": 1}
    assert strategy_options(_Shout, shout_suffix="\\n", shout_times=2) == {"shout_suffix": "\n", "shout_times": 2}
    with pytest.raises(ConfigError, match="unknown key data.shout_time. Did you mean 'shout_times'?"):
        strategy_options(_Shout, shout_time=2)
    with pytest.raises(ConfigError, match="data.shout_times must be an integer, got 'two'"):
        strategy_options(_Shout, shout_times="two")
    tok = ByteTokenizer()
    sample = _Shout(strategy_options(_Shout, shout_times=2), tok).encode({"shout": "hi"})
    assert tok.decode(sample.input_ids) == "HI!HI!"


def test_data_config_problems_and_detection_see_the_registered_plugin():
    with registered_plugin(_ShoutPlugin()):
        assert data_config_problems({"source": "a.jsonl", "data_path": "out"}) == []
        problems = data_config_problems({"source": "a.jsonl", "data_path": "out", "shout_times": "x"})
        assert problems == ["data.shout_times must be an integer, got 'x'"]
        assert detect_strategy(["shout", "id"]) is _Shout
        assert detect_strategy(["prompt", "completion"]).name == "prompt_completion"
        assert detect_strategy(["text", "shout"]).name == "text"  # text (30) is tried before shout (100)
        assert detect_strategy(["text", "shout"], strategy="shout") is _Shout  # forced, as data.strategy does
    with pytest.raises(ConfigError, match="unknown key data.shout_times"):
        detect_strategy(["shout"], shout_times=2)  # without the plugin its key is unknown


# -- plugins-example and the docs use only the public API ----------------------
_ALLOWED = {"rwkv_plug", "rwkv_plug.testing"}


def _rwkv_imports(source: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import of rwkv_plug in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rwkv_plug":
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "rwkv_plug"]
    return out


def _check_public(where: str, imports: list[tuple[str, list[str]]]) -> None:
    import rwkv_plug.testing as testing

    for module, names in imports:
        assert module in _ALLOWED, f"{where} imports {module}, which is not the public API"
        public = PUBLIC if module == "rwkv_plug" else testing.__all__
        assert set(names) <= set(public), f"{where} imports {sorted(set(names) - set(public))} from {module}"


def test_plugins_example_imports_only_the_public_api():
    example = REPO / "plugins-example"  # its package and tests (not a pip build/ copy)
    files = sorted([*(example / "rwkv_plug_example").rglob("*.py"), *(example / "tests").rglob("*.py")])
    assert len(files) >= 5
    seen = 0
    for path in files:
        imports = _rwkv_imports(path.read_text())
        _check_public(str(path.relative_to(REPO)), imports)
        seen += len(imports)
    assert seen >= 4  # the package and its tests do import rwkv-plug: the check looked at something


def test_writing_plugins_doc_shows_only_the_public_api():
    doc = (REPO / "docs" / "writing_plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    imports = [imp for block in blocks for line in block.splitlines()
               if line.startswith(("from rwkv_plug", "import rwkv_plug")) for imp in _rwkv_imports(line)]
    assert len(imports) >= 3
    _check_public("docs/writing_plugins.md", imports)
