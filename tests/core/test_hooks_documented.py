"""Meta-tests, datasette style: every hook is documented and exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from rwkv_plug.core import hookspecs

REPO = Path(__file__).resolve().parents[2]


def _hooks():
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("register_")
    ]


def test_every_hook_is_documented_with_its_signature():
    doc = (REPO / "docs" / "plugin_hooks.md").read_text()
    for name in _hooks():
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"## {name}" in doc, f"{name} has no section in docs/plugin_hooks.md"
        assert re.search(rf"def {name}\({re.escape(params)}", doc.replace("cli: click.Group", "cli")), name


def test_every_hook_is_exercised_by_a_test():
    sources = "\n".join(
        p.read_text() for p in (REPO / "tests").rglob("test_*.py") if p.name != Path(__file__).name
    )
    for name in _hooks():
        assert f"def {name}(" in sources, f"no test implements the hook {name}"
