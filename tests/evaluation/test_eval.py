"""`rwkv-plug eval`: loss by position bucket (chunked, state carried) and the passkey probe."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from rwkv_plug.evaluation.passkey import PasskeyTexts, answered, build_case, run_probe
from rwkv_plug.evaluation.positions import bucket_of, loss_by_position


def _tiny_model(vocab: int, dtype=torch.float64, seed: int = 0):
    from rwkv_plug.models import load_model
    from rwkv_plug.models.init import init_state_dict

    return load_model(init_state_dict(1, 64, vocab, seed=seed), kernel="torch", dtype=dtype)


def test_bucket_of_doubles_the_width_after_the_first():
    positions = torch.tensor([1, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128])
    assert bucket_of(positions, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]


def test_bucket_losses_equal_a_plain_per_position_computation_over_the_whole_sequence():
    vocab = 32
    model = _tiny_model(vocab)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):  # a few steps on a repeating pattern: not the init's near-uniform logits
        ids = (torch.arange(40).repeat(2, 1) * 3 + torch.randint(0, 2, (2, 40), generator=g)) % vocab
        logits, _ = model(ids[:, :-1], None)
        loss = F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows = []
    for n in (70, 45, 20, 9):  # padded in microbatches of 2; some mask bits 0
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        mask = [int(i % 5 != 2) for i in range(n)]
        rows.append({"input_ids": ids, "loss_mask": mask})

    got = loss_by_position(model, rows, ctx_len=16, first_bucket=8, microbatch_size=2)

    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    edges = [0, 8, 16, 32, 64, 128]
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            logits, _ = model(ids[:, :-1], None)  # the whole sequence in one call, no chunks
            ce = F.cross_entropy(logits[0], ids[0, 1:], reduction="none")
            for p in range(1, len(row["input_ids"])):
                if row["loss_mask"][p]:
                    k = next(i for i in range(len(edges) - 1) if edges[i] <= p < edges[i + 1])
                    sums[k] = sums.get(k, 0.0) + float(ce[p - 1])
                    counts[k] = counts.get(k, 0) + 1
    assert [(b.start, b.end) for b in got] == list(zip(edges[:-1], edges[1:]))
    assert [b.tokens for b in got] == [counts[k] for k in range(5)]
    for k, b in enumerate(got):
        assert b.loss == pytest.approx(sums[k] / counts[k], abs=1e-6)
    assert max(abs(b.loss - got[0].loss) for b in got) > 1e-3  # the buckets differ: a mixed-up sum would show


class CharTokenizer:
    """One id per character of ``alphabet`` (id 0 is padding)."""

    def __init__(self, alphabet: str) -> None:
        self.alphabet = alphabet
        self.vocab_size = len(alphabet) + 1

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) + 1 for c in text]

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i - 1] if 0 < i <= len(self.alphabet) else "" for i in ids)


TOY = PasskeyTexts(intro="", filler="ab ", needle="k{key}", question="?", answer="{key}")
TOK = CharTokenizer("ab k?0123456789")


def test_the_prompt_has_the_length_asked_and_the_key_at_its_depth():
    english = PasskeyTexts()
    tok = CharTokenizer(sorted(set(english.intro + english.filler + english.needle + english.question
                                   + "0123456789")))
    for depth in (0.0, 0.5, 1.0):
        case = build_case(tok, 600, depth, "31337", english)
        text = tok.decode(case.ids)
        assert len(case.ids) == 600 and text.startswith(english.intro) and text.endswith(english.question)
        filler_part = text[len(english.intro):-len(english.question)]
        at = filler_part.index("The pass key is 31337.")
        sentences = (600 - len(english.intro) - len(english.needle.format(key="31337"))
                     - len(english.question)) // len(english.filler)
        assert at == round(depth * sentences) * len(english.filler)  # at a sentence boundary, at the depth
        assert tok.decode(case.answer_ids) == " 31337"
    with pytest.raises(ValueError, match="cannot hold"):
        build_case(tok, 50, 0.5, "31337", english)


def test_an_answer_counts_when_it_starts_with_the_key():
    assert answered(" 31337. The", "31337") and answered("31337", "31337") and answered("777", "7")
    assert not answered(" 3133", "31337") and not answered(" 1 31337", "31337") and not answered("none", "1")
    assert not answered("x31337", "31337")


def _toy_batch(rng: random.Random, length: int, size: int) -> torch.Tensor:
    """Prompts of the toy probe's form, each followed by its one-digit answer."""
    rows = []
    for _ in range(size):
        key = str(rng.randrange(10))
        case = build_case(TOK, length, rng.random(), key, TOY)
        rows.append(case.ids + case.answer_ids)
    return torch.tensor(rows)


@pytest.mark.slow
def test_the_probe_scores_a_model_trained_for_it_above_one_that_is_not():
    torch.manual_seed(0)
    untrained = _tiny_model(TOK.vocab_size, torch.float32, seed=0)
    model = _tiny_model(TOK.vocab_size, torch.float32, seed=0)  # the same weights, then trained
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    for step in range(400):  # seconds: learn to answer with the digit after "k" (~150 steps)
        batch = _toy_batch(rng, rng.choice((20, 28, 36)), 32)
        logits, _ = model(batch[:, :-1], None)
        loss = F.cross_entropy(logits[:, -1], batch[:, -1])  # the answer only
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    model.eval()
    grid = dict(lengths=[24, 32], depths=[0.0, 0.5, 1.0], trials=10, digits=1, ctx_len=8, texts=TOY)
    trained = run_probe(model, TOK, **grid)
    chance = run_probe(untrained, TOK, **grid)
    accuracy = lambda results: sum(r.correct for r in results) / sum(r.trials for r in results)  # noqa: E731
    assert [(r.length, r.depth, r.trials) for r in trained] == [(n, d, 10) for n in (24, 32) for d in (0, .5, 1)]
    assert accuracy(trained) >= 0.9, trained
    assert accuracy(chance) <= 0.3, chance


@pytest.mark.slow
def test_eval_command_prints_the_buckets_and_the_probe_and_writes_a_png(tmp_path, monkeypatch, cli):
    import re

    import matplotlib.image

    from fit_project import _project

    from rwkv_plug.data.pipeline import prepare_dataset
    from rwkv_plug.evaluation.commands import load_eval_model
    from rwkv_plug.training.config import load_fit_config

    monkeypatch.chdir(tmp_path)
    cfg = _project(tmp_path)
    out = tmp_path / "eval.png"
    res = cli("eval", "model.pth", str(cfg), "--bucket", "16", "--passkey-lengths", "64,96",
              "--passkey-depths", "0,1", "--passkey-trials", "2", "--out", str(out), "--device", "cpu",
              "--model.ctx_len", "16", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    table = re.findall(r"^\s+(\d+k?)-(\d+k?)\s+([\d,]+)\s+([\d.]+)$", res.stdout, re.M)
    assert [(a, b) for a, b, _, _ in table] == [("0", "16"), ("16", "32"), ("32", "64"), ("64", "128")]
    # the same numbers as the library computes over the test split (72-token samples)
    data = load_fit_config(cfg).data
    rows = prepare_dataset(data, log=lambda _m: None)[0]["test"]
    want = loss_by_position(load_eval_model("model.pth", "fp32", "auto", "cpu"), rows, 16, first_bucket=16)
    assert [(int(n.replace(",", "")), float(v)) for _, _, n, v in table] == [
        (b.tokens, pytest.approx(b.loss, abs=1e-4)) for b in want]
    assert "passkey accuracy" in res.stdout and re.search(r"passkey overall: \d+/8 ", res.stdout)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(out).shape[:2] == (450, 1200)  # two panels, 12x4.5 inches at 100 dpi


def test_eval_refuses_a_passkey_length_too_short_in_one_line(tmp_path, cli):
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict

    save_state_dict(init_state_dict(1, 64, 50277, seed=0), tmp_path / "m.pth")
    res = cli("eval", str(tmp_path / "m.pth"), "--passkey-lengths", "10", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--passkey-lengths: 10 tokens cannot hold" in lines[0], res.stderr
