"""Helpers shared by the dataset pipeline tests (tests/data/test_data_*.py)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from rwkv_plug.core.cli import main
from rwkv_plug.data.tokenizer import load_tokenizer

WORDS = ("river stone light summer paper garden window music silver forest winter "
         "morning ocean story bridge candle").split()


def neox():
    return load_tokenizer("neox", {})


def words(seed: int, n: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_cfg(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def run(*args: str, capsys) -> tuple[int, str, str]:
    """The real console entry point, in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def load(path: str | Path):
    import datasets

    return datasets.load_from_disk(str(path))


def rows_of(ds) -> list[tuple[list[int], list[int]]]:
    return [(r["input_ids"], r["loss_mask"]) for r in ds]
