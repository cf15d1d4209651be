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


def test_chat_renders_and_learns_only_assistant_turns():
    tok = ByteTokenizer()
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    sample = ChatStrategy(_opts(), tok).encode(row)
    assert tok.decode(sample.input_ids) == "User: hi\n\nAssistant: hello\n\n"
    learned = tok.decode([t for t, m in zip(sample.input_ids, sample.loss_mask) if m])
    assert learned == " hello\n\n"


def test_chat_writes_one_separator_between_turns_whoever_spoke():
    tok = ByteTokenizer()
    row = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                        {"role": "assistant", "content": "ciao"}, {"role": "user", "content": "?"}]}
    sample = ChatStrategy(_opts(), tok).encode(row)
    text = tok.decode(sample.input_ids)
    assert text == ("System: be brief\n\nUser: hi\n\nAssistant: hello\n\nUser: bye\n\n"
                    "Assistant: ciao\n\nUser: ?")
    # each reply is learned with the separator that ends it, nothing else is
    learned = "".join(chr(t) if m else "." for t, m in zip(sample.input_ids, sample.loss_mask))
    assert learned == ("." * len("System: be brief\n\nUser: hi\n\nAssistant:") + " hello\n\n"
                       + "." * len("User: bye\n\nAssistant:") + " ciao\n\n" + "." * len("User: ?"))


def test_chat_rejects_bad_rows_with_a_reason():
    strategy = ChatStrategy(_opts(), ByteTokenizer())
    with pytest.raises(BadRow, match="messages"):
        strategy.encode({"messages": None})
    with pytest.raises(BadRow, match="message 0"):
        strategy.encode({"messages": [{"role": "robot", "content": "x"}]})


def test_chat_checks_its_trained_roles_when_the_config_is_read(example_plugin):
    problems = data_config_problems({"source": "a.jsonl", "data_path": "out", "chat_train_roles": ["asistant"]})
    assert problems == ["data.chat_train_roles names 'asistant', which data.chat_role_names does not "
                              "have (system, user, assistant)"]


def test_chat_is_detected_from_the_messages_column(example_plugin):
    assert detect_strategy(["messages", "id"]) is ChatStrategy


def test_text_override_appends_end_of_document(example_plugin):
    entry = example_plugin.registry("strategy").entry("text")
    assert entry.plugin == "example" and entry.overrides == ["rwkv_plug.builtin_strategies"]
    opts = strategy_options(entry.cls)
    tok = ByteTokenizer()
    sample = entry.cls(opts, tok).encode({"text": "abc"})
    assert tok.decode(sample.input_ids) == "abc<|endoftext|>"
    assert all(sample.loss_mask)
    assert entry.cls(opts, tok).encode_batch([{"text": "abc"}])[0].input_ids == sample.input_ids
