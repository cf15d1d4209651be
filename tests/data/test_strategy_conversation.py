"""The conversation strategy: iopairs and sender layouts, masks, and its config rules."""

from __future__ import annotations

import json

import pytest

from rwkv_plug.builtin_strategies.conversation import ConversationStrategy
from rwkv_plug.core.config import Problems
from rwkv_plug.core.interfaces import BadRow
from rwkv_plug.data.options import resolve_data_config
from rwkv_plug.data.strategy_select import pick_strategy
from test_strategies import ByteTokenizer, data_options, rendered

IOPAIRS = {
    "conversation_format": "iopairs", "conversation_key": "dialog",
    "conversation_input_key_prefix_map": {"input": "Q: ", "output": "A: "},
    "conversation_input_key_mask": {"input": False},
    "conversation_sender_suffix": {"input": "\\n", "output": "\\n\\n"},  # escapes, as written in YAML
    "conversation_end_of_conversation": "<end>",
}
SENDER = {
    "conversation_format": "sender", "conversation_key": "turns", "conversation_sender_key": "from",
    "conversation_sender_value_map": {"human": "User", "gpt": "Bot"},
    "conversation_input_key_map": {"value": "{sender}: "},
    "conversation_sender_mask": {"human": False},
    "conversation_sender_suffix": {"human": "\\n", "gpt": "\\n"},
}


def test_iopairs_emits_each_key_in_the_turns_order_with_its_prefix_mask_and_suffix():
    tok = ByteTokenizer()
    strategy = ConversationStrategy(data_options(IOPAIRS), tok)
    row = {"dialog": [{"input": "hi", "output": "hello"}, {"output": "again", "input": "more"}]}
    text, learned = rendered(strategy.encode(row), tok)
    assert text == "Q: hi\nA: hello\n\nA: again\n\nQ: more\n<end>"
    assert learned == "Q: \nA: hello\n\nA: again\n\nQ: \n<end>"  # input texts are masked, decorations are not


def test_sender_fills_the_template_with_the_label_and_masks_by_raw_sender():
    tok = ByteTokenizer()
    strategy = ConversationStrategy(data_options(SENDER), tok)
    row = {"turns": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"},
                     {"from": "system", "value": "note"}]}  # an unmapped sender: no prefix, learned
    text, learned = rendered(strategy.encode(row), tok)
    assert text == "User: 2+2?\nBot: 4\nnote"
    assert learned == "User: \nBot: 4\nnote"


@pytest.mark.parametrize("row, reason", [
    ({"dialog": "not a list"}, "column 'dialog' holds str, not a list of turns"),
    ({"dialog": ["x"]}, "turn 0 of column 'dialog' is str, not a mapping"),
    ({"dialog": [{"input": None}]}, "turn 0 key 'input' holds NoneType, not text"),
])
def test_bad_conversations_skip_the_row_with_a_reason(row, reason):
    with pytest.raises(BadRow, match=reason):
        ConversationStrategy(data_options(IOPAIRS), ByteTokenizer()).encode(row)
    with pytest.raises(BadRow, match="turn 0 has no 'from'"):
        ConversationStrategy(data_options(SENDER), ByteTokenizer()).encode({"turns": [{"value": "x"}]})


def test_detected_first_when_a_format_is_set_and_never_otherwise():
    assert pick_strategy(["dialog", "text"], data_options(IOPAIRS), None) is ConversationStrategy
    assert pick_strategy(["dialog", "text"], data_options({}), None) is not ConversationStrategy


@pytest.mark.parametrize("section, problem", [
    ({"conversation_format": "iopairs"}, "data.conversation_key is required with conversation_format"),
    ({"conversation_format": "sender", "conversation_key": "t"},
     "data.conversation_sender_key is required with conversation_format: sender"),
    ({"conversation_format": "chatml"}, "data.conversation_format must be one of 'iopairs', 'sender', got 'chatml'"),
])
def test_config_rules_are_found_when_the_config_is_read(section, problem):
    problems = Problems("cfg.yaml")
    resolve_data_config({"source": "a.jsonl", "data_path": "out", **section}, problems)
    assert any(p.startswith(problem) for p in problems.items), problems.items


def test_a_jsonl_of_conversations_builds(tmp_path, offline_data):
    from rwkv_plug.data.pipeline import prepare_dataset

    rows = [{"dialog": [{"input": f"question {i}", "output": f"answer {i}"}]} for i in range(6)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines: list[str] = []
    dd, _ = prepare_dataset({"source": str(tmp_path / "c.jsonl"), "data_path": str(tmp_path / "out"),
                             "tokenizer": "world", "test_split": 1, **IOPAIRS}, log=lines.append)
    assert "strategy 'conversation' for columns dialog" in lines
    assert len(dd["train"]) == 5 and all(0 in m and 1 in m for m in dd["train"]["loss_mask"])
