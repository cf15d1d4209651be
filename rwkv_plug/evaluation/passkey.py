"""The passkey-retrieval probe: a number hidden at a chosen depth in filler text, asked for at the end.

The test of Mohtashami & Jaggi, "Landmark Attention" (2023): repeated filler
sentences, one sentence that states a random pass key, and a question at the end.
A model that keeps what it read in its state answers with the key; one that does
not can only guess. The prompt is built in token space (each piece encoded once
and repeated), so its length in tokens is exact; the answer is the model's greedy
continuation, run with the state carried chunk by chunk (any length, bounded memory).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: The answer's tokens are generated greedily, this many more than the key's own tokens.
SLACK_TOKENS = 2


@dataclass(frozen=True)
class PasskeyTexts:
    """The probe's wording; ``{key}`` marks where the key goes."""

    intro: str = ("There is an important piece of information hidden inside a lot of irrelevant text. "
                  "Find it and memorize it. I will quiz you about it.\n")
    filler: str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
    needle: str = "The pass key is {key}. Remember it. {key} is the pass key.\n"
    question: str = "What is the pass key? The pass key is"
    #: the expected continuation (compared by its digits)
    answer: str = " {key}"


@dataclass(frozen=True)
class PasskeyCase:
    """One prompt: ``ids`` (``length`` tokens) hide ``key`` at ``depth`` (0 = start, 1 = end of the filler)."""

    length: int
    depth: float
    key: str
    ids: list[int]
    answer_ids: list[int]


@dataclass(frozen=True)
class PasskeyResult:
    length: int
    depth: float
    correct: int
    trials: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.trials if self.trials else float("nan")


class Encoder:
    """What the probe needs of a tokenizer."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def build_case(tok: Encoder, length: int, depth: float, key: str,
               texts: PasskeyTexts = PasskeyTexts()) -> PasskeyCase:
    """A prompt of exactly ``length`` tokens with the needle after ``depth`` of the filler.

    The filler is whole filler sentences (the last one cut to fit), the needle goes in
    at the sentence boundary nearest to ``depth``; raises ``ValueError`` when ``length``
    cannot hold the intro, needle and question.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    intro, question = tok.encode(texts.intro) if texts.intro else [], tok.encode(texts.question)
    needle, filler = tok.encode(texts.needle.format(key=key)), tok.encode(texts.filler)
    room = length - len(intro) - len(needle) - len(question)
    if room < 0 or not filler:
        raise ValueError(f"{length} tokens cannot hold the passkey prompt's {length - room} fixed tokens")
    body = (filler * (room // len(filler) + 1))[:room]
    sentences = room // len(filler)  # whole sentences; the needle goes between two of them
    at = round(depth * sentences) * len(filler) if sentences else 0
    at = min(at, room)
    ids = intro + body[:at] + needle + body[at:] + question
    return PasskeyCase(length, depth, key, ids, tok.encode(texts.answer.format(key=key)))


def random_key(rng: random.Random, digits: int) -> str:
    """A ``digits``-digit number (no leading zero unless one digit)."""
    low = 10 ** (digits - 1) if digits > 1 else 0
    return str(rng.randint(low, 10**digits - 1))


def answered(text: str, key: str) -> bool:
    """Whether a continuation starts (after spaces) with the key's digits; what follows them is not
    judged (a model may go on, e.g. ``" 31337. Remember"``, or repeat a one-digit key)."""
    return text.lstrip().startswith(key)


def run_probe(
    model,
    tok: Encoder,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    trials: int = 5,
    digits: int = 5,
    ctx_len: int = 512,
    seed: int = 0,
    texts: PasskeyTexts = PasskeyTexts(),
    on_case: Callable[[PasskeyCase, bool], None] | None = None,
) -> list[PasskeyResult]:
    """Accuracy of ``model``'s greedy answers per (length, depth), ``trials`` random keys each."""
    from rwkv_plug.models.sampling import generate

    rng = random.Random(seed)
    results = []
    for length in lengths:
        for depth in depths:
            correct = 0
            for _ in range(trials):
                case = build_case(tok, length, depth, random_key(rng, digits), texts)
                out = generate(model, case.ids, len(case.answer_ids) + SLACK_TOKENS, temperature=0.0,
                               chunk_len=ctx_len)
                ok = answered(tok.decode(out), case.key)
                correct += ok
                if on_case is not None:
                    on_case(case, ok)
            results.append(PasskeyResult(length, depth, correct, trials))
    return results
