"""Reading a config file: safe, and every mistake is one line naming the file and line."""

from __future__ import annotations

import pytest

from rwkv_plug.core.config import load_yaml
from rwkv_plug.core.errors import ConfigError


@pytest.mark.parametrize("text, message", [
    ("data:\n  source: a: b\n", "line 2 is not valid YAML: mapping values are not allowed here"),
    ("data:\n  source: [a\n", "line 2 is not valid YAML: the [ list begun there is never closed"),
    ("data: {source: a\n", "line 1 is not valid YAML: the { mapping begun there is never closed"),
    ('data:\n  source: "abc\n', "line 2 is not valid YAML: the quoted string begun there is never closed"),
    ("- a\n- b\n", "the top level must be a mapping of sections, got list"),
])
def test_mistakes_name_the_file_and_a_line_of_it(tmp_path, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(info.value) == f"{path}: {message}"


def test_python_tags_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "cfg.yaml"
    path.write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: line 1 is not valid YAML: could not determine a constructor"):
        load_yaml(path)
    assert not marker.exists()


def test_an_empty_file_is_an_empty_config_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' does not exist"):
        load_yaml(tmp_path / "nope.yaml")
