"""Helpers shared by the dataset pipeline tests (tests/data/test_data_*.py)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from rwkv_plug.core.cli import main
from rwkv_plug.data.tokenizer import load_tokenizer

WORDS = ("river stone light summer paper garden window music silver forest winter "
         "morning ocean story bridge candle").split()


#: The seed notebook's complete configs (docs: /work/shared/spec/seed-notebook.txt), verbatim.
SEED_CONFIGS = {
    "example-hf-enwiki.yaml": """\
        trainer:
          max_steps: 10
          target_batch_size: 32
        model:
          load_model: ../model/L6-D512-neox-init.pth
          ctx_len: 1024
          lr_init: 3e-4
          bptt_learning: true
          bptt_learning_range: -1
        data:
          data_path: ../datapath/enwiki_10k_neox_1024/

          source: "teven/enwiki_10k"
          # # Additional source dataset params, used to grab subsets
          # source_dataset_params:
          #   language: en

          tokenizer: neox
          min_token_size: 64
          max_token_size: -1
          text_rechunk_size: 2048
          text_rechunk_force: true
          custom_text_key: 'text'
          test_split: 0.01
          test_split_shuffle: false
        """,
    "example-hf-prompt-completion.yaml": """\
        trainer:
          max_steps: 10
          target_batch_size: 32
        model:
          load_model: ../model/L6-D512-neox-init.pth
          ctx_len: 1024
          lr_init: 1e-4
          bptt_learning: true
          bptt_learning_range: -1
        data:
          data_path: ../datapath/self-instruct-base/
          source: "eastwind/self-instruct-base"
          tokenizer: neox
          disable_prompt_completion_mask: false
        """,
    "example-hf-multi-column-keys.yaml": """\
        trainer:
          max_steps: 10
          target_batch_size: 32
        model:
          load_model: ../model/L6-D512-neox-init.pth
          ctx_len: 1024
          lr_init: 1e-4
          bptt_learning: true
          bptt_learning_range: -1
        data:
          data_path: ../datapath/self-instruct-base/
          source: "c-s-ale/dolly-15k-instruction-alpaca-format"
          tokenizer: neox
          multi_column_keys: ['instruction', 'input', 'output']
          multi_column_prefix: ['Instruction:\\n', 'Input:\\n', 'Output:\\n']
          multi_column_train_mask: [true, false, true]
          multi_column_separator: '\\n\\n'
        """,
}


def seed_config(name: str, **changes: str) -> str:
    """``SEED_CONFIGS[name]`` dedented, each ``key: value`` of ``changes`` put in place of that
    key's line (in whichever section it is), or added at the end (the data section) when absent."""
    text = textwrap.dedent(SEED_CONFIGS[name])
    for key, value in changes.items():
        text, found = re.subn(rf"^( *){key}: .*$", lambda m: f"{m.group(1)}{key}: {value}", text, count=1,
                              flags=re.M)
        if not found:
            text += f"  {key}: {value}\n"
    return text


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
