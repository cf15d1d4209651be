"""Shared fixtures: a fresh plugin set per test, and small helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rwkv_plug.core import plugins

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    """Every test starts with no plugin set loaded and no third-party plugins."""
    monkeypatch.setenv("RWKV_PLUG_PLUGINS", os.environ.get("RWKV_PLUG_TEST_PLUGINS", "none"))
    monkeypatch.delenv("RWKV_PLUG_STRICT_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Run the real ``rwkv-plug`` console script in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    exe = Path(sys.executable).with_name("rwkv-plug")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600
    )


def pytest_configure(config):
    # Tiny models run faster on one thread, and tests then don't fight each other
    # (or a tokenizer's worker threads) for the machine's two cores.
    import torch

    torch.set_num_threads(1)
