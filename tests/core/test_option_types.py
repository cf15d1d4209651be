"""Option value types: derived from the default, declared with type=/choices=/check=, checked for
every plugin's options when the data section is resolved."""

from __future__ import annotations

import pytest

from rwkv_plug.core import plugins
from rwkv_plug.core.config import Problems
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.core.hookspecs import hookimpl
from rwkv_plug.core.interfaces import Option, Sample, Strategy
from rwkv_plug.core.option_types import check_value
from rwkv_plug.data.options import DATA_OPTIONS, resolve_data_config


def problem(opt: Option, value) -> str | None:
    return check_value(opt, value)[1]


@pytest.mark.parametrize("default,good,bad,expected", [
    (True, False, "maybe", "must be true or false, got 'maybe'"),
    (True, False, 1, "must be true or false, got 1"),
    (3, -2, 2.5, "must be an integer, got 2.5"),
    (3, 7, True, "must be an integer, got True"),
    (0.5, 2, "x", "must be a number, got 'x'"),
    ("a", "", 5, "must be a string, got 5"),
    (["a"], [], "a", "must be a list, got 'a'"),
    ({"a": 1}, {}, [1], "must be a mapping, got [1]"),
])
def test_type_is_derived_from_the_default(default, good, bad, expected):
    opt = Option("k", default)
    assert problem(opt, good) is None and problem(opt, default) is None
    assert problem(opt, bad) == expected
    assert problem(opt, None) == expected.split(", got")[0] + ", got None"  # a default that is not null


def test_declared_type_choices_check_and_null():
    keys = Option("k", None, type=list[str])
    assert problem(keys, None) is None and problem(keys, ["a", "b"]) is None
    assert problem(keys, ["a", 1]) == "must be a list of strings or null, got ['a', 1]; entry 1 is 1, not a string"
    mapping = Option("k", {}, type=dict[str, str])
    assert problem(mapping, {"a": 1}) == "must be a mapping of strings to strings, got {'a': 1}"
    either = Option("k", "x", type=str | None)
    assert problem(either, None) is None
    assert problem(Option("k", None), object()) is None  # no default, no type: anything
    mode = Option("k", "fast", choices=("fast", "slow"))
    assert problem(mode, "slow") is None
    assert problem(mode, "medium") == "must be one of 'fast', 'slow', got 'medium'"
    positive = Option("k", 1, check=lambda v: None if v > 0 else "more than 0")
    assert problem(positive, 0) == "must be more than 0, got 0"
    assert check_value(Option("k", 0.5), "3e-4") == (3e-4, None)  # YAML 1.1 reads 3e-4 as a string


def test_every_builtin_option_default_fits_its_own_type():
    options = list(DATA_OPTIONS)
    for registry in (plugins.strategies(), plugins.tokenizers()):
        for entry in registry:
            options.extend(entry.cls.options)
    assert options
    for opt in options:
        assert problem(opt, opt.default) is None, opt.name


def test_a_third_party_strategys_options_are_checked_even_when_not_in_use():
    class Shout(Strategy):
        """Upper-cases column 'text' (a test plugin)."""

        name = "shout"
        options = (
            Option("shout_times", 1, "Repeats."),  # int, from the default
            Option("shout_style", "caps", "Style.", choices=("caps", "bold")),
        )

        def encode(self, row):
            ids = self.tokenizer.encode(row["text"].upper() * self.opts["shout_times"])
            return Sample(ids, [1] * len(ids))

    class Plugin:
        @hookimpl
        def register_strategies(self):
            return [Shout]

    plugins.current().register(Plugin(), "shout-plugin")
    try:
        problems = Problems("cfg.yaml")
        cfg = resolve_data_config({"data_path": "x", "source": "a.jsonl", "shout_times": "twice",
                                   "shout_style": "loud", "strategy": "text"}, problems)
        with pytest.raises(ConfigError) as exc:
            problems.raise_if_any()
        assert "data.shout_times must be an integer, got 'twice'" in str(exc.value)
        assert "data.shout_style must be one of 'caps', 'bold', got 'loud'" in str(exc.value)
        assert cfg["strategy"] == "text"
    finally:
        plugins.current().unregister("shout-plugin")
