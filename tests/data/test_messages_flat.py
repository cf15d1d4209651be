"""The messages strategy's flat fast path against its per-row path on random conversations.

The flat path tokenises labels, contents and ends of turn as separate texts
of one batch and builds the mask from their lengths; the per-row path
(``MessagesStrategy.encode``) tokenises piece by piece with the cached label
ids. Every random row must come out with the same ids and mask, or be
skipped with the same reason, whatever the options and however the batch is
cut into parts.
"""

from __future__ import annotations

import random

import pytest

from rwkv_plug.builtin_strategies.messages import MessagesStrategy
from rwkv_plug.core.interfaces import BadRow
from test_strategies import ByteTokenizer
from test_strategy_messages import options

#: Content of a message: words, whitespace, the turn end inside a message, non-ASCII, empty.
WORDS = ["hello", " world", "2+2?", "\n\n", "\n", "  ", "é🙂", "中文", "User:", "Assistant: x", "<end>", "."]
SHAREGPT_ROLE = {"user": "human", "assistant": "gpt", "system": "system"}


def _content(rng: random.Random) -> str:
    if rng.random() < 0.08:
        return ""
    return "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))


def random_row(rng: random.Random) -> dict:
    """A conversation in the OpenAI or ShareGPT shape, with a system column, train flags, and now and then
    a flaw that skips the row (unknown role, wrong types, no learned message)."""
    sharegpt = rng.random() < 0.3
    messages = []
    for k in range(rng.randint(1, 7)):
        role = rng.choice(["user", "assistant", "assistant", "user", "system"])
        if sharegpt:
            m = {"from": SHAREGPT_ROLE[role], "value": _content(rng)}
        else:
            m = {"role": role, "content": _content(rng)}
        flag = rng.random()
        if flag < 0.1:
            m["train"] = True
        elif flag < 0.2:
            m["train"] = False
        elif flag < 0.22:
            m["train"] = "yes"  # not a bool: the row is skipped
        if rng.random() < 0.02:
            m[("from" if sharegpt else "role")] = "robot"  # unknown role
        messages.append(m)
    row: dict = {("conversations" if sharegpt else "messages"): messages}
    system = rng.random()
    if system < 0.3:
        row["system"] = _content(rng)
    elif system < 0.35:
        row["system"] = None
    elif system < 0.37:
        row["system"] = 7  # not text: the row is skipped
    return row


def per_row(strategy: MessagesStrategy, row: dict):
    try:
        return strategy.encode(row)
    except BadRow as exc:
        return exc


@pytest.mark.parametrize("section", [
    {},
    {"messages_train_end_of_turn": False},
    {"messages_train_roles": ["user", "assistant"], "messages_turn_end": "<end>"},
    {"messages_role_names": {"system": "S", "user": "Q", "assistant": "A"}, "messages_system_column": None},
], ids=["defaults", "end-of-turn-unlearned", "users-learned+own-turn-end", "renamed+no-system-column"])
@pytest.mark.parametrize("min_part_rows", [1000, 7], ids=["one part", "many parts"])
def test_the_flat_path_equals_the_per_row_path_on_random_conversations(section, min_part_rows, offline_data,
                                                                       monkeypatch):
    from rwkv_plug.builtin_strategies import messages_flat
    from rwkv_plug.data.tokenizer import load_tokenizer

    monkeypatch.setattr(messages_flat, "MIN_PART_ROWS", min_part_rows)
    rng = random.Random(1234)
    rows = [random_row(rng) for _ in range(300)]
    strategy = MessagesStrategy(options(section), load_tokenizer("world", {}))
    flat = strategy.encode_flat(rows)
    assert len(flat.offsets) == len(rows) + 1 and len(flat.ids) == len(flat.mask) == flat.offsets[-1]
    learned = 0
    for i, row in enumerate(rows):
        want = per_row(strategy, row)
        a, b = int(flat.offsets[i]), int(flat.offsets[i + 1])
        if isinstance(want, BadRow):
            assert a == b and str(flat.bad.get(i)) == str(want), f"row {i}: {row}"
        else:
            assert i not in flat.bad, f"row {i} skipped: {flat.bad[i]}"
            assert flat.ids[a:b].tolist() == want.input_ids, f"row {i}: {row}"
            assert flat.mask[a:b].tolist() == want.loss_mask, f"row {i}: {row}"
            learned += 1
    # the rows are varied enough to mean something: most encode, some are skipped for each kind of flaw
    assert 150 < learned < 300 and len(flat.bad) == len(rows) - learned
    assert flat.ids.dtype.name == "int32" and flat.mask.dtype.name == "int8" and flat.offsets.dtype.name == "int64"


class _BosTokenizer(ByteTokenizer):
    """Puts a start token (0) before every text, so even the empty text has a token."""

    def encode(self, text):
        return [0, *text.encode("utf-8")]


def test_a_tokenizer_that_gives_the_empty_text_a_token_still_has_no_piece_for_an_empty_content():
    """The flat path tokenises an empty content as ``""``; the per-row path has no piece for it."""
    strategy = MessagesStrategy(options(), _BosTokenizer())
    assert strategy.fast_paths() == frozenset({"flat", "arrow"})
    rows = [{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}] * 40
    want = strategy.encode(rows[0])
    assert want.input_ids.count(0) == 5  # 2 labels, 1 content, 2 ends: the empty content has no start token
    for batch in (rows[:2], rows):  # one part, and 80 rows: more than one
        flat = strategy.encode_flat(batch)
        for i, row in enumerate(batch):
            a, b = int(flat.offsets[i]), int(flat.offsets[i + 1])
            want = strategy.encode(row)
            assert flat.ids[a:b].tolist() == want.input_ids and flat.mask[a:b].tolist() == want.loss_mask
        assert int(flat.offsets[-1]) == len(flat.ids) == len(flat.mask)
