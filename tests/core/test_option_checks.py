"""Strategies' and tokenizers' own option rules (check_options) run when the config is read."""

from __future__ import annotations

import pytest

from rwkv_plug.core import plugins
from rwkv_plug.core.config import Problems
from rwkv_plug.core.errors import ConfigError
from rwkv_plug.core.hookspecs import hookimpl
from rwkv_plug.core.interfaces import Sample, Strategy
from rwkv_plug.data.options import resolve_data_config

BASE = {"source": "a.txt", "data_path": "out"}


def problems_of(section: dict) -> list[str]:
    problems = Problems("cfg.yaml")
    resolve_data_config({**BASE, **section}, problems)
    return problems.items


@pytest.mark.parametrize("section, problem", [
    ({"multi_column_keys": ["a", "b"], "multi_column_prefix": ["x"], "multi_column_train_mask": [True, True]},
     "data.multi_column_prefix has 1 entries but data.multi_column_keys has 2; give one per key (null for none)"),
    ({"multi_column_train_mask": [True]},
     "data.multi_column_train_mask has 1 entries but data.multi_column_keys has 3; give one true/false per key"),
    ({"strategy": "multi_column", "multi_column_keys": []},
     "data.strategy is multi_column but data.multi_column_keys is [], which turns it off; list the columns to join"),
    ({"tokenizer": "EleutherAI/gpt-neox-20b", "tokenizer_kwargs": {"trust_remote_code": True}},
     "set data.tokenizer_trust_remote_code: true instead of trust_remote_code in the tokenizer kwargs"),
])
def test_rules_across_keys_are_found_at_config_load(section, problem):
    found = problems_of(section)
    assert len(found) == 1 and found[0].startswith(problem), found


def test_a_value_of_the_wrong_type_is_reported_once():
    found = problems_of({"multi_column_keys": ["a", "b"], "multi_column_prefix": 5})
    assert found == ["data.multi_column_prefix must be a list with a string or null per key, got 5"]


def test_the_built_in_defaults_have_no_problems():
    assert problems_of({}) == []
    assert problems_of({"multi_column_keys": []}) == []  # [] turns multi_column off: fine unless forced


class Checked(Strategy):
    """Third-party strategy with one rule across its keys."""

    name = "checked"

    @classmethod
    def check_options(cls, options):
        return ["data.checked_low must be below data.checked_high"] if options.get("strict") else []

    def encode(self, row):
        return Sample([1, 2], [1, 1])


class Broken(Checked):
    name = "broken_check"

    @classmethod
    def check_options(cls, options):
        raise KeyError("checked_low")


class Plugin:
    @hookimpl
    def register_strategies(self):
        return [Checked, Broken]


def test_third_party_checks_run_and_a_crashing_one_is_named():
    plugins.current().register(Plugin(), name="third-party")
    found = problems_of({"strict": True})
    assert "data.checked_low must be below data.checked_high" in found
    assert "strategy 'broken_check': its option check failed with KeyError: 'checked_low'" in found
    with pytest.raises(ConfigError, match="cfg.yaml: 2 problems"):
        problems = Problems("cfg.yaml")
        resolve_data_config({**BASE, "strict": True}, problems)
        problems.raise_if_any()
