"""Unit tests of the example plugin's strategies, registered in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rwkv_plug import BadRow  # noqa: E402
from rwkv_plug.testing import ByteTokenizer, data_config_problems, detect_strategy, registered_plugin  # noqa: E402
from rwkv_plug.testing import strategy_options  # noqa: E402
from rwkv_plug_example import hooks  # noqa: E402
from rwkv_plug_example.chat import ChatStrategy  # noqa: E402


def _opts(**over):
    return strategy_options(ChatStrategy, **over)


@pytest.fixture
def example_plugin():
    with registered_plugin(hooks, name="example") as p:
        yield p


CONVERSATION = {"messages": [
    {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "ciao"}, {"role": "user", "content": "?"},
    {"role": "assistant", "content": "!"}]}
RENDERED = ("System: be brief\n\nUser: hi\n\nAssistant: hello\n\nUser: bye\n\nAssistant: ciao\n\n"
            "User: ?\n\nAssistant: !\n\n")


def learned_text(sample) -> str:
    """The sample as text, each token that is not learned shown as '.' (ByteTokenizer: one byte each)."""
    return "".join(chr(t) if m else "." for t, m in zip(sample.input_ids, sample.loss_mask))


def dots(text: str) -> str:
    return "." * len(text.encode())


def test_chat_renders_every_turn_and_learns_only_the_last_reply():
    sample = ChatStrategy(_opts(), ByteTokenizer()).encode(CONVERSATION)
    assert ByteTokenizer().decode(sample.input_ids) == RENDERED  # one separator after every turn
    head = RENDERED[:RENDERED.rindex(" !")]
    assert learned_text(sample) == dots(head) + " !\n\n"


@pytest.mark.parametrize("replies, learned", [(2, [" ciao\n\n", " !\n\n"]),
                                              (0, [" hello\n\n", " ciao\n\n", " !\n\n"]),
                                              (5, [" hello\n\n", " ciao\n\n", " !\n\n"])])
def test_chat_learns_the_last_n_replies(replies, learned):
    sample = ChatStrategy(_opts(chat_learned_replies=replies), ByteTokenizer()).encode(CONVERSATION)
    assert [run for run in learned_text(sample).split(".") if run] == learned


def test_chat_ends_without_a_separator_after_an_unlearned_last_turn():
    row = {"messages": CONVERSATION["messages"][:-1]}  # ends with the user's "?"
    sample = ChatStrategy(_opts(), ByteTokenizer()).encode(row)
    assert ByteTokenizer().decode(sample.input_ids) == RENDERED[:RENDERED.rindex("\n\nAssistant: !")]
    assert [run for run in learned_text(sample).split(".") if run] == [" ciao\n\n"]


def test_chat_rejects_bad_rows_with_a_reason():
    strategy = ChatStrategy(_opts(), ByteTokenizer())
    with pytest.raises(BadRow, match="column 'messages' is not a non-empty list"):
        strategy.encode({"messages": None})
    with pytest.raises(BadRow, match="message 0"):
        strategy.encode({"messages": [{"role": "robot", "content": "x"}]})
    with pytest.raises(BadRow, match="no assistant reply"):
        strategy.encode({"messages": [{"role": "user", "content": "x"}]})


def test_chat_options_are_checked_when_the_config_is_read(example_plugin):
    base = {"source": "a.jsonl", "data_path": "out"}
    assert data_config_problems({**base, "chat_learned_replies": -1}) == [
        "data.chat_learned_replies must be 0 or more, got -1"]
    assert data_config_problems({**base, "chat_role_names": {"user": "User", "bot": "Bot"}}) == [
        "data.chat_role_names needs an 'assistant' role, whose replies are learned (roles: user, bot)"]


def test_chat_is_chosen_by_name_only(example_plugin):
    # a messages column gets the built-in messages strategy; chat never takes it over
    assert detect_strategy(["messages", "id"]).name == "messages"
    assert detect_strategy(["messages", "id"], strategy="chat") is ChatStrategy


def test_text_override_appends_end_of_document(example_plugin):
    entry = example_plugin.registry("strategy").entry("text")
    assert entry.plugin == "example" and entry.overrides == ["rwkv_plug.builtin_strategies"]
    opts = strategy_options(entry.cls)
    tok = ByteTokenizer()
    sample = entry.cls(opts, tok).encode({"text": "abc"})
    assert tok.decode(sample.input_ids) == "abc<|endoftext|>"
    assert all(sample.loss_mask)
    assert entry.cls(opts, tok).encode_batch([{"text": "abc"}])[0].input_ids == sample.input_ids
