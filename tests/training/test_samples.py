"""Samples while training: configured prompts are continued and logged; nothing happens without them."""

from __future__ import annotations

import csv

import pytest

from fit_project import _project

from rwkv_plug.core.config import Problems, resolve_options
from rwkv_plug.training.model_config import ModelConfig
from rwkv_plug.training.options import MODEL_OPTIONS
from rwkv_plug.training.samples import sample_callbacks


def test_off_by_default_no_callback():
    assert sample_callbacks(ModelConfig(), {}) == []
    assert len(sample_callbacks(ModelConfig(sample_prompts=["Once"]), {})) == 1


@pytest.mark.parametrize("values, needle", [
    ({"sample_prompts": "the cat"}, "model.sample_prompts must be a list of non-empty texts"),
    ({"sample_prompts": ["ok", ""]}, "model.sample_prompts must be a list of non-empty texts"),
    ({"sample_every_n_steps": -1}, "model.sample_every_n_steps must be an integer >= 0, got -1"),
    ({"sample_tokens": 0}, "model.sample_tokens must be an integer >= 1, got 0"),
    ({"sample_tokens": True}, "model.sample_tokens must be an integer >= 1, got True"),
])
def test_bad_sample_options_are_reported(values, needle):
    problems = Problems("cfg.yaml")
    resolve_options("model", {"sample_prompts": ["x"], "sample_every_n_steps": 0, "sample_tokens": 8, **values},
                    MODEL_OPTIONS, problems, check_types=True, yaml_numbers=True)  # as the model section does
    assert len(problems.items) == 1 and problems.items[0].startswith(needle)


@pytest.mark.slow
def test_configured_prompts_are_continued_every_n_steps_into_every_log(tmp_path, cli):
    import torch

    from rwkv_plug.data.tokenizer import load_tokenizer
    from rwkv_plug.evaluation.commands import load_eval_model
    from rwkv_plug.models.sampling import generate

    cfg = _project(tmp_path, max_steps=4)
    res = cli("fit", str(cfg), "--model.sample_prompts", "[the cat, a red ball]",
              "--model.sample_every_n_steps", "2", "--model.sample_tokens", "6", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = tmp_path / "runs" / "cfg" / "logs" / "version_0"
    with (folder / "samples.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["prompt"]) for r in rows] == [("2", "the cat"), ("2", "a red ball"),
                                                        ("4", "the cat"), ("4", "a red ball")]
    # the step-4 samples are the greedy continuations of the model that step 4 left (last.ckpt)
    with torch.random.fork_rng():
        model = load_eval_model(str(tmp_path / "runs" / "cfg" / "checkpoints" / "last.ckpt"), "fp32", "auto", "cpu")
    tok = load_tokenizer(str(tmp_path / "tok"), {})
    for row in rows[2:]:
        ids = generate(model, tok.encode(row["prompt"]), 6, temperature=0.0, chunk_len=32)
        assert row["sample"] == tok.decode(ids) and len(ids) == 6
    text = (folder / "samples.txt").read_text()
    assert text.count("--- step 2 ---") == 2 and text.count("--- step 4 ---") == 2
    assert f"the cat{rows[2]['sample']}\n" in text
    assert f"step 4 sample: 'the cat' -> {rows[2]['sample']!r}" in res.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    assert {"samples/0/text_summary", "samples/1/text_summary"} <= set(acc.Tags()["tensors"])
    assert [e.step for e in acc.Tensors("samples/0/text_summary")] == [2, 4]
    saved = (folder / "config.yaml").read_text()  # the overrides, as the run's config
    assert "--model.sample_every_n_steps 2" in saved and "- the cat" in saved
