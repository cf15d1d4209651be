"""Regenerate the bundled demo corpus (examples/data/demo_corpus.txt).

The corpus is synthetic English written by a small seeded grammar, so it is
ours to ship, deterministic, and patterned enough that a tiny model's loss
falls visibly within a minute of CPU training.
"""

from __future__ import annotations

import random
from pathlib import Path

NAMES = ["Ada", "Bo", "Cleo", "Dov", "Eli", "Fay", "Gus", "Hana", "Ivo", "Juno"]
ANIMALS = ["cat", "dog", "fox", "owl", "hen", "goat", "duck", "bee"]
PLACES = ["the river", "the hill", "the market", "the old mill", "the garden", "the forest"]
ACTIONS = ["walked to", "ran to", "looked at", "sang near", "slept by", "painted"]
FEELINGS = ["happy", "tired", "curious", "brave", "quiet", "hungry"]


def sentence(rng: random.Random) -> str:
    pick = rng.choice
    kind = rng.randrange(4)
    if kind == 0:
        return f"{pick(NAMES)} {pick(ACTIONS)} {pick(PLACES)} with a {pick(ANIMALS)}."
    if kind == 1:
        return f"The {pick(ANIMALS)} was {pick(FEELINGS)}, so it {pick(ACTIONS)} {pick(PLACES)}."
    if kind == 2:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"{pick(NAMES)} counted {a} and {b} {pick(ANIMALS)}s, which makes {a + b}."
    return f"At {pick(PLACES)}, {pick(NAMES)} felt {pick(FEELINGS)}."


def story(rng: random.Random, number: int) -> str:
    lines = [f"Story {number}."]
    for _ in range(rng.randrange(3, 6)):
        lines.append(" ".join(sentence(rng) for _ in range(rng.randrange(2, 5))))
    return "\n".join(lines)


def main() -> None:
    rng = random.Random(20231124)
    text = "\n\n".join(story(rng, i) for i in range(1, 401)) + "\n"
    out = Path(__file__).with_name("data") / "demo_corpus.txt"
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({len(text):,} characters)")


if __name__ == "__main__":
    main()
