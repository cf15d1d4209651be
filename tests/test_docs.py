"""The docs stay true: every config key a user can write is documented."""

from __future__ import annotations

from pathlib import Path

from rwkv_plug.core import plugins
from rwkv_plug.data.options import DATA_OPTIONS
from rwkv_plug.training.options import MODEL_FIXED, MODEL_OPTIONS, MODEL_UNSUPPORTED, TRAINER_OPTIONS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_config_key_is_in_docs_config_md():
    doc = (DOCS / "config.md").read_text()
    options = [*DATA_OPTIONS, *MODEL_OPTIONS, *TRAINER_OPTIONS]
    for reg in (plugins.strategies(), plugins.tokenizers()):
        for entry in reg:
            options.extend(entry.cls.options)
    missing = sorted({o.name for o in options if f"`{o.name}`" not in doc})
    assert not missing, f"undocumented config keys: {missing}"
    refused = sorted(k for k in [*MODEL_UNSUPPORTED, *MODEL_FIXED] if f"`{k}`" not in doc)
    assert not refused, f"refused keys without a documented reason: {refused}"


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
