"""plugins-example, installed with pip like a real third-party package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli


@pytest.fixture(scope="module")
def example_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO / "plugins-example")],
        check=True, capture_output=True,
    )
    return {"PYTHONPATH": str(target), "RWKV_PLUG_PLUGINS": "all"}


@pytest.mark.slow
def test_list_strategies_shows_new_strategy_and_override(example_env):
    result = run_cli("list-strategies", env=example_env)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "example" in rows["chat"]
    assert "example (overrides rwkv_plug.builtin_strategies)" in rows["text"]
    assert "rwkv_plug.builtin_strategies" in rows["multi_column"]


@pytest.mark.slow
def test_config_selecting_the_example_strategy_builds_a_dataset(example_env, tmp_path: Path):
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"},
                      {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(6)
    ]
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data:\n  data_path: {tmp_path / 'out'}\n  source: {source}\n  tokenizer: world\n"
        "  strategy: chat\n  test_split: 1\n  num_proc: 1\n"
    )
    result = run_cli("preload", str(cfg), env=example_env)
    assert result.returncode == 0, result.stderr + result.stdout

    import datasets

    from rwkv_plug.data.tokenizer import load_tokenizer

    built = datasets.load_from_disk(str(tmp_path / "out"))
    tok = load_tokenizer("world", {})
    texts = sorted(tok.decode(list(r["input_ids"])) for r in built["train"])
    assert len(built["train"]) == 5 and len(built["test"]) == 1
    assert texts[0] == "User: question 0\n\nAssistant: answer 0\n\n"
    sample = built["train"][0]
    learned = tok.decode([t for t, m in zip(sample["input_ids"], sample["loss_mask"]) if m])
    assert learned.startswith(" answer")
