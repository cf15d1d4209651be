"""``rwkv-plug inspect``: statistics and samples, with and without colour."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import run_cli
from rwkv_plug.core.cli import cli
from rwkv_plug.data.tokenizer import load_tokenizer
from rwkv_plug.data.view import histogram, render_sample



pytestmark = pytest.mark.usefixtures("offline_data")



def _config(tmp_path, ctx_len: int = 4):
    rows = [{"prompt": "Question: one plus one?", "completion": " Two."},
            {"prompt": "Question: the sky?", "completion": " Blue, mostly."},
            {"prompt": "Question: grass?", "completion": " Green."}]
    (tmp_path / "pc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  ctx_len: {ctx_len}\ndata:\n  data_path: out\n  source: pc.jsonl\n"
                   "  test_split: 1\n")
    return cfg, rows


@pytest.mark.slow
def test_inspect_plain_marks_masks_tokens_and_ctx_boundaries(tmp_path):
    cfg, rows = _config(tmp_path)
    result = CliRunner().invoke(cli, ["inspect", str(cfg), "--samples", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\x1b[" not in out  # not a terminal: no colour codes
    tok = load_tokenizer("neox", {})
    p, c = tok.encode(rows[0]["prompt"]), tok.encode(rows[0]["completion"])
    assert f"train: 2 samples, {len(p) + len(c) + len(tok.encode(rows[1]['prompt'])) + len(tok.encode(rows[1]['completion']))} tokens" in out
    assert "token-length histogram:" in out
    assert f"train sample 0: {len(p) + len(c)} tokens, {len(c)} learned" in out
    # the prompt is masked: its tokens sit inside [[ ]], split by |, and a ctx boundary every 4 tokens
    # after the first: chunk 1 learns tokens 1-4, chunk 2 tokens 5-8 (targets; token 0 is only input)
    masked = "|".join(tok.decode([t]) for t in p[:5])
    assert "[[" + masked + "]]" in out
    assert "ctx_len boundary: chunk 2 learns from token 5 on" in out
    assert "]]" + "|".join(tok.decode([t]) for t in c) in out.replace("\n", "")


@pytest.mark.slow
def test_inspect_reports_the_padding_of_fits_batches(tmp_path):
    cfg, rows = _config(tmp_path)
    cfg.write_text("trainer:\n  microbatch_size: 2\n" + cfg.read_text())
    result = CliRunner().invoke(cli, ["inspect", str(cfg), "--samples", "0"])
    assert result.exit_code == 0, result.output
    tok = load_tokenizer("neox", {})
    n = [len(tok.encode(r["prompt"])) + len(tok.encode(r["completion"])) for r in rows[:2]]  # the train rows
    share = (2 * max(n) - sum(n)) / (2 * max(n))  # one batch of both, padded to the longer
    assert (f"  padding: {share:.1%} of the token positions in the training batches in the dataset's order "
            "(microbatch_size 2; each batch is padded to its longest sample)") in result.output.splitlines()


@pytest.mark.slow
def test_inspect_color_and_ctx_len_option(tmp_path):
    cfg, _ = _config(tmp_path, ctx_len=1024)
    result = CliRunner().invoke(cli, ["inspect", str(cfg), "--color", "--ctx-len", "3", "--split", "test"],
                                color=True)
    assert result.exit_code == 0, result.output
    assert "\x1b[32m" in result.output and "\x1b[31m" in result.output  # learned green, masked red
    assert "\x1b[48;2;38;38;38m" in result.output and "\x1b[48;2;72;72;72m" in result.output
    assert "chunk 2 learns from token 4 on" in result.output
    assert "test sample 0" in result.output


def test_render_sample_plain():
    decode = {1: "a", 2: "b", 3: "\n", 4: "d"}
    text = render_sample([1, 2, 3, 4], [0, 0, 1, 1], lambda ids: decode[ids[0]], color=False, ctx_len=2)
    assert text == "[[a|b]]↵\n\n──── ctx_len boundary: chunk 2 learns from token 3 on ────\nd"
    # 4 tokens are 3 inputs: one chunk of 3, so no boundary (and none past the last chunk)
    assert "boundary" not in render_sample([1, 2, 3, 4], [0, 0, 1, 1], lambda ids: decode[ids[0]], False, 3)


def test_render_sample_marks_where_packed_records_start():
    decode = {1: "a", 2: "b", 0: "_", 4: "d", 5: "e"}
    # records [a b] @0 and [d e] @4, padding between (data.packing_state: reset)
    text = render_sample([1, 2, 0, 0, 4, 5], [0, 1, 0, 0, 0, 1], lambda ids: decode[ids[0]], color=False,
                         ctx_len=None, record_starts=[0, 4])
    assert text == "[[a]]b[[_|_]]\n──── record 2 starts at token 4: the state resets ────\n[[d]]e"


def test_histogram_counts_every_sample():
    lengths = np.array([3, 3, 4, 10, 50, 50, 50])
    lines = histogram(lengths, bins=5)
    assert sum(int(line.split()[1]) for line in lines) == len(lengths)
    assert lines[0].split()[0].startswith("3-") and lines[-1].split()[0].endswith("-50")
    assert len(lines) <= 5


@pytest.mark.parametrize("option,value", [("--samples", "-1"), ("--ctx-len", "0"), ("--max-tokens", "0")])
def test_inspect_refuses_counts_below_their_minimum(tmp_path, option, value):
    cfg, _ = _config(tmp_path)
    result = run_cli("inspect", str(cfg), option, value)
    assert result.returncode == 2
    assert f"Invalid value for '{option}': {value} is not in the range" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything is built
