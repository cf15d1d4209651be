"""Unit tests of the example plugin's strategies, registered in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rwkv_plug.core import plugins  # noqa: E402
from rwkv_plug.core.interfaces import BadRow, Tokenizer  # noqa: E402
from rwkv_plug_example import hooks  # noqa: E402
from rwkv_plug_example.chat import ChatStrategy  # noqa: E402


class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte, so expected ids are easy to compute."""

    name = "bytes"
    vocab_size = 256

    @classmethod
    def load(cls, spec, options):
        return cls()

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8")

    def fingerprint(self):
        return "bytes"


def _opts(**over):
    opts = {o.name: o.default for o in ChatStrategy.options}
    opts.update(over)
    return opts


@pytest.fixture
def example_plugin():
    plugins.reset()
    p = plugins.configure("none")
    p.register(hooks, name="example")
    yield p
    plugins.reset()


def test_chat_renders_and_learns_only_assistant_turns():
    tok = ByteTokenizer()
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    sample = ChatStrategy(_opts(), tok).encode(row)
    assert tok.decode(sample.input_ids) == "User: hi\n\nAssistant: hello\n\n"
    learned = tok.decode([t for t, m in zip(sample.input_ids, sample.loss_mask) if m])
    assert learned == " hello\n\n"


def test_chat_rejects_bad_rows_with_a_reason():
    strategy = ChatStrategy(_opts(), ByteTokenizer())
    with pytest.raises(BadRow, match="messages"):
        strategy.encode({"messages": None})
    with pytest.raises(BadRow, match="message 0"):
        strategy.encode({"messages": [{"role": "robot", "content": "x"}]})


def test_chat_checks_its_trained_roles_when_the_config_is_read(example_plugin):
    from rwkv_plug.core.config import Problems
    from rwkv_plug.data.options import resolve_data_config

    problems = Problems("cfg.yaml")
    resolve_data_config({"source": "a.jsonl", "data_path": "out", "chat_train_roles": ["asistant"]}, problems)
    assert problems.items == ["data.chat_train_roles names 'asistant', which data.chat_role_names does not "
                              "have (system, user, assistant)"]


def test_chat_is_detected_from_the_messages_column(example_plugin):
    from rwkv_plug.data.strategy_select import pick_strategy

    chosen = pick_strategy(["messages", "id"], _opts(), None)
    assert chosen is ChatStrategy


def test_text_override_appends_end_of_document(example_plugin):
    entry = plugins.strategies().entry("text")
    assert entry.plugin == "example" and entry.overrides == ["rwkv_plug.builtin_strategies"]
    opts = {o.name: o.default for o in entry.cls.options}
    tok = ByteTokenizer()
    sample = entry.cls(opts, tok).encode({"text": "abc"})
    assert tok.decode(sample.input_ids) == "abc<|endoftext|>"
    assert all(sample.loss_mask)
    assert entry.cls(opts, tok).encode_batch([{"text": "abc"}])[0].input_ids == sample.input_ids
