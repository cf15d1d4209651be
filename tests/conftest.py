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
def kernel_cache(monkeypatch, tmp_path_factory):
    """RWKV_PLUG_CACHE in a folder of this test session: test kernels' verdicts stay out of ~/.cache."""
    monkeypatch.setenv("RWKV_PLUG_CACHE", str(tmp_path_factory.getbasetemp() / "rwkv_plug_cache"))


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


@pytest.fixture
def cli(capsys, monkeypatch):
    """The console entry point run in this process, answering as :func:`run_cli` does.

    For what a command says and its exit code: it spares each call a new interpreter that
    imports torch and Lightning again (seconds each). Keep :func:`run_cli` where the test is
    about the process itself: library noise on stderr, ranks that re-run the command, signals.
    """
    from rwkv_plug.core.cli import main

    def call(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()  # what the test printed before is not the command's
        with pytest.raises(SystemExit) as exc:
            main(list(args))
            raise SystemExit(0)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), exc.value.code or 0, out.out, out.err)

    return call


def two_ranks() -> str:
    """The Lightning strategy for a test's 2 CPU ranks: ``ddp_fork``, whose ranks reuse this
    process's imports (a spawned rank imports torch and Lightning anew, seconds each), unless a
    GPU test initialised CUDA here, which a forked rank cannot use again: then ``ddp_spawn``."""
    import torch

    return "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, with the reason, where CUDA is not available."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
        for item in gpu:
            item.add_marker(skip)


def pytest_configure(config):
    # Tiny models run faster on one thread, and tests then don't fight each other
    # (or a tokenizer's worker threads) for the machine's two cores.
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def offline_data(monkeypatch, tmp_path):
    """The HF hub offline, a neox tokenizer file found, and ``tmp_path`` as the cwd.

    ``make test`` sets RWKV_PLUG_NEOX_TOKENIZER; a bare ``pytest`` run falls back
    to the team's shared copy beside the checkout.
    """
    import datasets
    import huggingface_hub.constants as hc

    shared = REPO.parent / "shared" / "tokenizers" / "20B_tokenizer.json"
    monkeypatch.setenv("RWKV_PLUG_NEOX_TOKENIZER", os.environ.get("RWKV_PLUG_NEOX_TOKENIZER", str(shared)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)


#: Pieces that stress a byte-level trie: multi-byte UTF-8, emoji, the EOT text, blank lines.
TEXT_PIECES = ["river", " stone", "ÿ", "中文", "✓", "\n\n", "<|endoftext|>", "  ", "é", "🙂", "a"]


def random_texts(seed: int, n: int, max_pieces: int = 40) -> list[str]:
    """``n`` seeded documents of 0..max_pieces pieces (empty ones included)."""
    import random

    rnd = random.Random(seed)
    return ["".join(rnd.choice(TEXT_PIECES) for _ in range(rnd.randint(0, max_pieces))) for _ in range(n)]
