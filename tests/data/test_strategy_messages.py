"""The messages strategy: OpenAI/TRL and ShareGPT rows, the RWKV layout and an HF chat template.

Expected tokens are built independently of the strategy: in the RWKV layout
from the tokenizer applied piece by piece to the text we write out here, and
with the chat template from a character-level vocabulary where every
character (and each control token) is one known id.
"""

from __future__ import annotations

import json
import string

import pytest

from conftest import run_cli
from rwkv_plug.builtin_strategies.conversation import ConversationStrategy
from rwkv_plug.builtin_strategies.messages import MessagesStrategy
from rwkv_plug.core.config import Problems
from rwkv_plug.core.errors import ConfigError, DataError
from rwkv_plug.core.interfaces import BadRow
from rwkv_plug.data.options import resolve_data_config
from rwkv_plug.data.strategy_select import pick_strategy
from test_strategies import ByteTokenizer, rendered


def options(section: dict | None = None) -> dict:
    """A whole ``data:`` section as the config layer resolves it (every plugin's defaults)."""
    problems = Problems("test.yaml")
    cfg = resolve_data_config({"source": "a.jsonl", "data_path": "out", **(section or {})}, problems)
    problems.raise_if_any()
    return cfg


def problems_of(section: dict) -> list[str]:
    problems = Problems("test.yaml")
    resolve_data_config({"source": "a.jsonl", "data_path": "out", **section}, problems)
    return problems.items


CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                     {"role": "assistant", "content": "6"}]}
SHAREGPT = {"system": "Be brief.", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"},
                                                     {"from": "human", "value": "and 3+3?"},
                                                     {"from": "gpt", "value": "6"}]}
FULL = "System: Be brief.\n\nUser: 2+2?\n\nAssistant: 4\n\nUser: and 3+3?\n\nAssistant: 6\n\n"


# -- the RWKV layout ------------------------------------------------------------
@pytest.mark.parametrize("row", [CHAT, SHAREGPT], ids=["messages", "sharegpt+system column"])
def test_rwkv_layout_learns_assistant_text_and_its_end_of_turn(row):
    tok = ByteTokenizer()
    text, learned = rendered(MessagesStrategy(options(), tok).encode(row), tok)
    assert text == FULL
    assert learned == " 4\n\n 6\n\n"


def test_rwkv_layout_exact_world_tokens_piece_by_piece(offline_data):
    from rwkv_plug.data.tokenizer import load_tokenizer

    tok = load_tokenizer("world", {})
    sample = MessagesStrategy(options({"tokenizer": "world"}), tok).encode(SHAREGPT)
    ids: list[int] = []
    mask: list[int] = []
    for piece, learn in [("System:", 0), (" Be brief.", 0), ("\n\n", 0), ("User:", 0), (" 2+2?", 0), ("\n\n", 0),
                         ("Assistant:", 0), (" 4", 1), ("\n\n", 1), ("User:", 0), (" and 3+3?", 0),
                         ("\n\n", 0), ("Assistant:", 0), (" 6", 1), ("\n\n", 1)]:
        part = tok.encode(piece)
        ids += part
        mask += [learn] * len(part)
    assert sample.input_ids == ids and sample.loss_mask == mask
    assert sample.loss_mask[0] == 0  # the first token is never a target
    # the batch path (one tokenizer call for every row) gives the same samples
    assert MessagesStrategy(options({"tokenizer": "world"}), tok).encode_batch([SHAREGPT, SHAREGPT]) == [sample] * 2


@pytest.mark.parametrize("tokenizer", ["bytes", "world"])
def test_the_flat_fast_path_gives_the_same_samples_and_skips(tokenizer, offline_data):
    from rwkv_plug.data.tokenizer import load_tokenizer

    tok = ByteTokenizer() if tokenizer == "bytes" else load_tokenizer("world", {})
    rows = [CHAT, {"messages": []}, SHAREGPT, {"messages": [{"role": "assistant", "content": ""}]},
            {"messages": [{"role": "tool", "content": "x"}]},
            {"messages": [{"role": "user", "content": "é🙂\n\nx", "train": True},
                          {"role": "assistant", "content": "y"}]}]
    for section in ({}, {"messages_train_end_of_turn": False, "messages_turn_end": "<end>"}):
        strategy = MessagesStrategy(options(section), tok)
        flat = strategy.encode_flat(rows)
        batch = strategy.encode_batch(rows)
        assert sorted(flat.bad) == [1, 4] and [str(flat.bad[i]) for i in (1, 4)] == [str(batch[1]), str(batch[4])]
        for i, sample in enumerate(batch):
            a, b = int(flat.offsets[i]), int(flat.offsets[i + 1])
            if isinstance(sample, BadRow):
                assert a == b
            else:
                assert flat.ids[a:b].tolist() == sample.input_ids and flat.mask[a:b].tolist() == sample.loss_mask
    assert MessagesStrategy(options(), tok).encode_flat([{"messages": None}]).offsets.tolist() == [0, 0]


def test_a_subclass_that_changes_the_pieces_keeps_them_and_other_mappings_are_read_alike():
    from types import MappingProxyType

    class Shouting(MessagesStrategy):
        def pieces(self, row):
            return [(p.upper() if isinstance(p, str) else p, learn) for p, learn in super().pieces(row)]

    tok = ByteTokenizer()
    assert Shouting(options(), tok).encode_flat([CHAT]) is None  # declines: the pipeline uses its encode_batch
    assert rendered(Shouting(options(), tok).encode(CHAT), tok)[1] == " 4\n\n 6\n\n".upper()
    # a message that is a read-only mapping, not a dict, takes the step-by-step check and reads the same
    proxied = {"messages": [MappingProxyType(m) for m in CHAT["messages"]]}
    strategy = MessagesStrategy(options(), tok)
    assert strategy.encode(proxied) == strategy.encode(CHAT)


def test_end_of_turn_can_be_left_unlearned_and_roles_renamed():
    tok = ByteTokenizer()
    opts = options({"messages_train_end_of_turn": False, "messages_turn_end": "\\n",
                    "messages_role_names": {"system": "SYS", "user": "Q", "assistant": "A"}})
    text, learned = rendered(MessagesStrategy(opts, tok).encode(CHAT), tok)
    assert text == "SYS: Be brief.\nQ: 2+2?\nA: 4\nQ: and 3+3?\nA: 6\n"
    assert learned == " 4 6"


def test_per_message_train_flags_override_the_trained_roles():
    tok = ByteTokenizer()
    row = {"messages": [{"role": "user", "content": "hi", "train": True},
                        {"role": "assistant", "content": "bad answer", "train": False},
                        {"role": "user", "content": "again"},
                        {"role": "assistant", "content": "good answer"}]}
    text, learned = rendered(MessagesStrategy(options(), tok).encode(row), tok)
    assert text == "User: hi\n\nAssistant: bad answer\n\nUser: again\n\nAssistant: good answer\n\n"
    assert learned == " hi\n\n good answer\n\n"


def test_trained_roles_and_a_mapped_sharegpt_role():
    tok = ByteTokenizer()
    opts = options({"messages_train_roles": ["user", "assistant"], "messages_role_map": {"bot": "assistant"}})
    row = {"conversations": [{"from": "user", "value": "q"}, {"from": "bot", "value": "a"}]}
    text, learned = rendered(MessagesStrategy(opts, tok).encode(row), tok)
    assert text == "User: q\n\nAssistant: a\n\n" and learned == " q\n\n a\n\n"


def test_keys_set_to_none_are_absent_as_in_a_table_of_structs():
    # datasets gives every message of a column every key any message has, None where unset
    tok = ByteTokenizer()
    row = {"messages": [{"role": None, "content": None, "from": "human", "value": "q", "train": None},
                        {"role": "assistant", "content": "a", "from": None, "value": None, "train": None}],
           "system": None}
    assert rendered(MessagesStrategy(options(), tok).encode(row), tok) == ("User: q\n\nAssistant: a\n\n", " a\n\n")


def test_a_system_message_in_the_list_wins_over_the_system_column():
    tok = ByteTokenizer()
    row = {**CHAT, "system": "ignored"}
    assert rendered(MessagesStrategy(options(), tok).encode(row), tok)[0] == FULL
    no_column = options({"messages_system_column": None})
    row = {"messages": CHAT["messages"][1:], "system": "not read"}
    assert rendered(MessagesStrategy(no_column, tok).encode(row), tok)[0] == FULL[len("System: Be brief.\n\n"):]


@pytest.mark.parametrize("row, reason", [
    ({"messages": []}, "column 'messages' is an empty list of messages"),
    ({"messages": "hi"}, "column 'messages' holds str, not a list of messages"),
    ({"messages": None}, "column 'messages' is None"),
    ({"text": "x"}, "column 'messages' is missing"),
    ({"messages": ["hi"]}, "a message in 'messages' is str, not a mapping"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "unknown role 'tool' \\(roles: system, user, assistant; map"),
    ({"messages": [{"role": 3, "content": "x"}]}, "'role' in 'messages' holds int, not a role name"),
    ({"messages": [{"content": "x"}]}, "has neither 'role' nor 'from'"),
    ({"messages": [{"role": "assistant"}]}, "a message in 'messages' has no 'content'"),
    ({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]},
     "'content' in 'messages' holds list, not text"),
    ({"conversations": [{"from": "gpt", "value": 4}]}, "'value' in 'conversations' holds int, not text"),
    ({"messages": [{"role": "assistant", "content": "x", "train": "yes"}]}, "'train' in 'messages' holds str"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no message is learned"),
    ({"messages": [{"role": "assistant", "content": "x"}], "system": 5}, "column 'system' holds int, not text"),
])
def test_bad_rows_are_skipped_with_their_reason(row, reason):
    strategy = MessagesStrategy(options(), ByteTokenizer())
    with pytest.raises(BadRow, match=reason):
        strategy.encode(row)
    good = {"messages": [{"role": "assistant", "content": "ok"}]}
    out = strategy.encode_batch([row, good])
    assert isinstance(out[0], BadRow) and not isinstance(out[1], BadRow)


# -- detection and options --------------------------------------------------------
def test_detected_by_its_column_after_an_explicit_conversation_format():
    assert pick_strategy(["messages", "id"], options(), None) is MessagesStrategy
    assert pick_strategy(["conversations", "system"], options(), None) is MessagesStrategy
    assert pick_strategy(["messages", "text"], options(), None) is MessagesStrategy  # before text
    conv = options({"conversation_format": "sender", "conversation_key": "conversations",
                    "conversation_sender_key": "from", "conversation_input_key_map": {"value": "{sender}: "}})
    assert pick_strategy(["conversations"], conv, None) is ConversationStrategy
    assert pick_strategy(["chat", "text"], options({"messages_column": "chat"}), None) is MessagesStrategy
    with pytest.raises(DataError, match="data.messages_column is 'chats' but the dataset has no such column"):
        pick_strategy(["chat", "text"], options({"messages_column": "chats"}), None)
    with pytest.raises(DataError, match="data.strategy is 'messages', which needs a 'messages' or 'conversations'"):
        pick_strategy(["text"], options(), "messages")


@pytest.mark.parametrize("section, problem", [
    ({"messages_train_roles": ["bot"]}, "data.messages_train_roles names bot, which data.messages_role_names"),
    ({"messages_role_map": {"gpt": "model"}}, "data.messages_role_map maps to model"),
    ({"messages_role_names": {"user": "User", "assistant": "Assistant"}},
     "data.messages_system_column needs a 'system' role"),
    ({"messages_format": "chatml"}, "data.messages_format must be one of 'rwkv', 'chat_template', got 'chatml'"),
    ({"messages_format": "chat_template", "messages_train_roles": ["user", "assistant"]},
     "data.messages_train_roles must be [assistant] with messages_format: chat_template"),
    ({"messages_format": "chat_template", "messages_train_end_of_turn": False},
     "data.messages_train_end_of_turn applies to messages_format: rwkv only"),
    ({"messages_train_end_of_turn": "yes"}, "data.messages_train_end_of_turn must be true or false"),
    ({"messages_turn_end": ""}, "data.messages_turn_end must be a non-empty text"),
])
def test_option_mistakes_are_found_when_the_config_is_read(section, problem):
    found = problems_of(section)
    assert any(p.startswith(problem) for p in found), found


def test_chat_template_needs_an_hf_tokenizer():
    with pytest.raises(ConfigError, match="chat_template needs an hf tokenizer .* not 'test-bytes'"):
        MessagesStrategy(options({"messages_format": "chat_template"}), ByteTokenizer())


# -- an HF chat template ------------------------------------------------------------
SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>"]
VOCAB = {t: i for i, t in enumerate(SPECIAL + sorted(set(string.printable)))}
# ChatML with the assistant's content and end marker inside {% generation %}
TEMPLATE = (r"{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['role'] == 'assistant' %}"
            r"{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}"
            r"{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}")


def _hf_folder(path, template: str | None = TEMPLATE):
    """A character-level fast tokenizer with control tokens and ``template``, saved to ``path``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", additional_special_tokens=SPECIAL[1:])
    if template is not None:
        fast.chat_template = template
    fast.save_pretrained(str(path))
    return str(path)


def _chatml(turns: list[tuple[str, str, bool]]) -> tuple[list[int], list[int]]:
    """Ids and mask of ChatML ``(role, content, learned)`` turns from the character vocabulary."""
    ids: list[int] = []
    mask: list[int] = []

    def put(text: str, bit: int) -> None:
        ids.extend(VOCAB[c] for c in text)
        mask.extend([bit] * len(text))

    for role, content, learn in turns:
        ids.append(VOCAB["<|im_start|>"])
        mask.append(0)
        put(role + "\n", 0)
        put(content, int(learn))
        ids.append(VOCAB["<|im_end|>"])
        mask.append(int(learn))
        put("\n", 0)
    return ids, mask


@pytest.fixture
def hf_strategy(tmp_path, offline_data):
    from rwkv_plug.data.tokenizer import load_tokenizer

    def make(section: dict | None = None, template: str | None = TEMPLATE):
        folder = _hf_folder(tmp_path / f"tok{abs(hash(template))}", template)
        opts = options({"tokenizer": folder, "messages_format": "chat_template", **(section or {})})
        return MessagesStrategy(opts, load_tokenizer(folder, opts))

    return make


@pytest.mark.parametrize("row", [CHAT, SHAREGPT], ids=["messages", "sharegpt+system column"])
def test_chat_template_exact_tokens_and_the_librarys_assistant_mask(hf_strategy, row):
    sample = hf_strategy().encode(row)
    ids, mask = _chatml([("system", "Be brief.", False), ("user", "2+2?", False), ("assistant", "4", True),
                         ("user", "and 3+3?", False), ("assistant", "6", True)])
    assert (sample.input_ids, sample.loss_mask) == (ids, mask)


def test_chat_template_applies_per_message_train_flags(hf_strategy):
    strategy = hf_strategy()
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no", "train": False},
                        {"role": "user", "content": "again"}, {"role": "assistant", "content": "yes"}]}
    sample = strategy.encode(row)
    ids, mask = _chatml([("user", "hi", False), ("assistant", "no", False), ("user", "again", False),
                         ("assistant", "yes", True)])
    assert (sample.input_ids, sample.loss_mask) == (ids, mask)
    learn_user = {"messages": [{"role": "user", "content": "hi", "train": True},
                               {"role": "assistant", "content": "yes"}]}
    with pytest.raises(BadRow, match="'train': true on a message that is not the assistant's needs messages_format"):
        strategy.encode(learn_user)
    out = strategy.encode_batch([learn_user, row, {"messages": []}])
    assert isinstance(out[0], BadRow) and out[1] == sample and isinstance(out[2], BadRow)


def test_chat_template_declines_the_flat_path(hf_strategy):
    assert hf_strategy().encode_flat([CHAT]) is None  # the pipeline then uses encode_batch


def test_a_template_without_generation_markers_is_a_config_error(hf_strategy):
    plain = TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(ConfigError, match=r"chat template has no \{% generation %\} markers"):
        hf_strategy(template=plain)
    with pytest.raises(ConfigError, match="the hf tokenizer has no chat template"):
        hf_strategy(template=None)


def test_the_chat_template_is_part_of_the_hf_fingerprint(tmp_path, offline_data):
    from rwkv_plug.builtin_tokenizers.hf import HFTokenizer

    one = HFTokenizer.load(_hf_folder(tmp_path / "a"), {}).fingerprint()
    two = HFTokenizer.load(_hf_folder(tmp_path / "b", TEMPLATE.replace("\\n", " ")), {}).fingerprint()
    assert one != two  # a changed template rebuilds a cached dataset


# -- the whole pipeline ---------------------------------------------------------------
def _write_chats(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}],
             "system": "Be brief." if i % 2 else None} for i in range(6)]
    rows.append({"conversations": [{"from": "tool", "value": "x"}], "system": None})
    rows.append({"conversations": [], "system": None})
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_sharegpt_jsonl_preloads_with_skipped_rows_counted(tmp_path, offline_data):
    from rwkv_plug.data.pipeline import prepare_dataset
    from rwkv_plug.data.tokenizer import load_tokenizer

    _write_chats(tmp_path)
    lines: list[str] = []
    dd, _ = prepare_dataset({"source": str(tmp_path / "chats.jsonl"), "data_path": str(tmp_path / "out"),
                             "tokenizer": "world", "test_split": 0, "num_proc": 1}, log=lines.append)
    assert "strategy 'messages' for columns conversations, system" in lines
    assert any("skipped 1: a message in 'conversations' has unknown role 'tool'" in line for line in lines)
    assert any("skipped 1: column 'conversations' is an empty list of messages" in line for line in lines)
    tok = load_tokenizer("world", {})
    rows = [r for split in dd.values() for r in split]
    texts = {tok.decode(list(r["input_ids"])): tok.decode([t for t, m in zip(r["input_ids"], r["loss_mask"]) if m])
             for r in rows}
    assert len(texts) == 6
    assert texts["User: question 0\n\nAssistant: answer 0\n\n"] == " answer 0\n\n"
    assert texts["System: Be brief.\n\nUser: question 1\n\nAssistant: answer 1\n\n"] == " answer 1\n\n"


@pytest.mark.slow
def test_inspect_shows_a_messages_dataset(tmp_path, offline_data):
    _write_chats(tmp_path)
    (tmp_path / "cfg.yaml").write_text(f"data:\n  source: {tmp_path / 'chats.jsonl'}\n  data_path: {tmp_path / 'out'}"
                                       "\n  tokenizer: world\n  test_split: 0\n  num_proc: 1\n")
    res = run_cli("inspect", str(tmp_path / "cfg.yaml"), "--samples", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "strategy 'messages'" in res.stdout + res.stderr
    # the prompt is masked ([[ ]]) and the answer with its end of turn is learned
    assert "train sample 0: 11 tokens, 3 learned" in res.stdout
    assert "[[User|:| question| 0|↵\n↵\n|Ass|istant|:]] answer| 0|↵\n↵\n" in res.stdout


def _odd_rows() -> list:
    """Rows of every shape the flat path's quick loop hands to ``turns`` (valid or not)."""
    from types import MappingProxyType

    user, reply = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    return [
        CHAT, SHAREGPT, {"messages": [user, reply], "system": "Sys."},  # system column added
        {"messages": [{"role": "system", "content": "own"}, user, reply], "system": "Sys."},  # its own wins
        {"messages": [user, reply], "system": ""}, {"messages": [user, reply], "system": 5},
        {"messages": [user, reply], "conversations": None}, {"messages": None, "conversations": [user, reply]},
        {"messages": [user, MappingProxyType(reply)]}, MappingProxyType({"messages": [user, reply]}),
        {"messages": [user, "text"]}, {"messages": [user, {"content": "x"}]}, {"messages": [user, {"role": 3}]},
        {"messages": [user, {"role": "robot", "content": "x"}]}, {"messages": [user, {"role": "assistant"}]},
        {"messages": [user, {"role": "assistant", "content": 7}]},
        {"messages": [user, {**reply, "train": "yes"}]}, {"messages": [user, {**reply, "train": False}]},
        {"messages": [{**user, "train": True}, {**reply, "train": False}]},
        {"messages": [user, {"role": "assistant", "content": ""}]}, {"messages": []}, {"other": 1},
        {"messages": [user, {"from": "gpt", "value": "x", "role": None}]},
    ]


@pytest.mark.parametrize("parts", ["one part", "many parts"])
@pytest.mark.parametrize("tokenizer", ["bytes", "world"])
def test_the_flat_path_equals_encode_batch_on_odd_rows_in_one_or_many_parts(tokenizer, parts, offline_data,
                                                                           monkeypatch):
    from rwkv_plug.builtin_strategies import messages_flat
    from rwkv_plug.core.interfaces import FlatSamples
    from rwkv_plug.data.tokenizer import load_tokenizer

    if parts == "many parts":
        monkeypatch.setattr(messages_flat, "MIN_PART_ROWS", 3)  # 8 parts of the 69 rows
    tok = ByteTokenizer() if tokenizer == "bytes" else load_tokenizer("world", {})
    rows = _odd_rows() * 3
    strategy = MessagesStrategy(options(), tok)
    got, want = strategy.encode_flat(rows), FlatSamples.from_samples(strategy.encode_batch(rows))
    assert got.ids.tolist() == want.ids.tolist() and got.offsets.tolist() == want.offsets.tolist()
    assert got.mask.tolist() == want.mask.tolist()
    assert {i: str(e) for i, e in got.bad.items()} == {i: str(e) for i, e in want.bad.items()}
    assert len(got.bad) == 3 * 11  # the rows above that must be skipped, each with its reason


def test_a_whole_build_is_the_same_with_and_without_the_flat_path(tmp_path, offline_data, monkeypatch):
    """The dataset a messages source builds into, through the flat path (in parts) and through encode_batch."""
    from rwkv_plug.builtin_strategies import messages_flat
    from rwkv_plug.data.pipeline import prepare_dataset

    monkeypatch.setattr(messages_flat, "MIN_PART_ROWS", 8)  # several parts per batch
    rows = [r for r in _odd_rows() if isinstance(r, dict) and "messages" in r
            and all(isinstance(m, dict) for m in r["messages"] or [])] * 20
    rows = [{"messages": r["messages"], "system": r.get("system") if isinstance(r.get("system"), str) else None}
            for r in rows]
    src = tmp_path / "chats.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def build(name: str):
        lines: list[str] = []
        cfg = {"data_path": str(tmp_path / name), "source": str(src), "tokenizer": "world", "num_proc": 1,
               "test_split": 5}
        dd, _ = prepare_dataset(cfg, force=True, log=lines.append)
        return {s: dd[s].with_format("arrow")[:] for s in ("train", "test")}, lines[1:]

    calls = []
    real = MessagesStrategy.encode_flat
    monkeypatch.setattr(MessagesStrategy, "encode_flat", lambda self, r: calls.append(1) or real(self, r))
    fast, fast_log = build("fast")
    assert calls
    monkeypatch.setattr(MessagesStrategy, "fast_paths", lambda self: frozenset())
    calls.clear()
    slow, slow_log = build("slow")
    assert not calls  # not declared: never called
    for split in ("train", "test"):
        assert fast[split].num_rows > 0 and fast[split].equals(slow[split]), f"{split} differs"
    assert fast_log == slow_log  # the same summary: the same rows skipped, for the same reasons
    assert sum("  skipped 20: " in line for line in fast_log) == 9
