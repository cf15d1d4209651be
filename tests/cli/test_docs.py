"""The docs stay true: every config key a user can write is documented."""

from __future__ import annotations

from pathlib import Path

from rwkv_plug.core import plugins
from rwkv_plug.data.options import DATA_OPTIONS
from rwkv_plug.training.options import MODEL_LEGACY, MODEL_OPTIONS, TRAINER_OPTIONS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_config_key_is_in_docs_config_md():
    doc = (DOCS / "config.md").read_text()
    options = [*DATA_OPTIONS, *MODEL_OPTIONS, *TRAINER_OPTIONS]
    for reg in (plugins.strategies(), plugins.tokenizers()):
        for entry in reg:
            options.extend(entry.cls.options)
    missing = sorted({o.name for o in options if f"`{o.name}`" not in doc})
    assert not missing, f"undocumented config keys: {missing}"
    refused = sorted(o.name for o in MODEL_LEGACY if f"`{o.name}`" not in doc)
    assert not refused, f"refused keys without a documented reason: {refused}"


def test_config_md_tables_are_generated_from_the_declarations():
    from rwkv_plug.config_docs import DOCS as CONFIG_MD, FIX, render, tables

    current = CONFIG_MD.read_text()
    for name in tables():  # every table has its markers, so none is left hand-written
        assert f"<!-- generated: {name} " in current and f"<!-- end generated: {name} -->" in current, name
    assert render(current) == current, f"docs/config.md is out of date with the config declarations; {FIX}"


def test_the_docs_generator_rewrites_a_stale_table_and_keeps_the_prose():
    from rwkv_plug.config_docs import render

    stale = ("prose before\n<!-- generated: model-legacy (old) -->\n| key | why |\n| `x` | stale |\n"
             "<!-- end generated: model-legacy -->\nprose after\n")
    fresh = render(stale)
    assert fresh.startswith("prose before\n") and fresh.endswith("prose after\n")
    assert "stale" not in fresh and "| `head_size` | 64 | RWKV-v5 has a head size of 64" in fresh


def test_the_docs_command_checks_and_rewrites(tmp_path, monkeypatch, capsys):
    from rwkv_plug import config_docs

    stale = tmp_path / "config.md"
    stale.write_text("<!-- generated: model-legacy (old) -->\n| old |\n<!-- end generated: model-legacy -->\n")
    monkeypatch.setattr(config_docs, "DOCS", stale)
    assert config_docs.main(["--check"]) == 1
    assert "is out of date with the config declarations; change a key's text in its declaration" in \
        capsys.readouterr().err
    assert config_docs.main([]) == 0 and "| `head_size` |" in stale.read_text()
    assert config_docs.main(["--check"]) == 0


def test_readme_gives_the_two_commands_first():
    readme = (DOCS.parent / "README.md").read_text()
    quick = readme.index("## Quick start")
    assert readme.index("make demo", quick) < readme.index("make test", quick) < readme.index("##", quick + 5)


def test_cache_section_states_the_source_hash_the_code_uses():
    from rwkv_plug.data import sources

    doc = (DOCS / "config.md").read_text()
    cache = " ".join(doc[doc.index("### Cache"):doc.index("### Known limits")].split())
    algo = sources._hasher()[0]  # e.g. xxh3_128
    assert algo.replace("_", "-") in cache
    assert f"whole content for files up to {sources.HASH_LIMIT >> 30} GiB" in cache
    assert f"{sources.HASH_SAMPLES} blocks of {sources.HASH_BLOCK >> 20} MiB" in cache
    assert "SHA-256" not in cache
