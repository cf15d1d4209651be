"""Built-in dataset strategies: exact tokens and masks, config checks, detection.

Expectations are computed from small tokenizers defined here, piece by
piece, never copied from the code under test.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from rwkv_plug.builtin_strategies.conversation import ConversationStrategy
from rwkv_plug.builtin_strategies.multi_column import MultiColumnStrategy
from rwkv_plug.builtin_strategies.prompt_completion import PromptCompletionStrategy
from rwkv_plug.builtin_strategies.text import TextStrategy
from rwkv_plug.core import plugins
from rwkv_plug.core.config import Problems, resolve_options
from rwkv_plug.core.errors import ConfigError, DataError, UnknownNameError
from rwkv_plug.core.hookspecs import hookimpl
from rwkv_plug.core.interfaces import BadRow, Sample, Strategy, Tokenizer
from rwkv_plug.data.strategy_select import pick_strategy

REPO = Path(__file__).resolve().parents[2]
BUILTINS = (TextStrategy, PromptCompletionStrategy, MultiColumnStrategy, ConversationStrategy)


class ByteTokenizer(Tokenizer):
    """ids = UTF-8 bytes; counts encode_batch calls."""

    name = "test-bytes"

    def __init__(self) -> None:
        self.batch_calls = 0

    @classmethod
    def load(cls, spec, options):
        return cls()

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def encode_batch(self, texts):
        self.batch_calls += 1
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return bytes(ids).decode("utf-8")

    def fingerprint(self):
        return "bytes"


class PairTokenizer(ByteTokenizer):
    """One id per two characters, so tokenising pieces apart differs from tokenising the whole."""

    def encode(self, text):
        return [1000 * len(text[i : i + 2]) + ord(text[i]) for i in range(0, len(text), 2)]


def data_options(section: dict | None = None) -> dict:
    """The ``data:`` options as the config layer resolves them (defaults, escapes)."""
    problems = Problems("test.yaml")
    opts = [o for cls in BUILTINS for o in cls.options]
    out = resolve_options("data", section or {}, opts, problems, passthrough=("strategy",), check_types=True)
    problems.raise_if_any()
    return out


def rendered(sample: Sample, tok: ByteTokenizer) -> tuple[str, str]:
    """(all text, learned text) of a byte-tokenised sample."""
    learned = [t for t, m in zip(sample.input_ids, sample.loss_mask) if m]
    return tok.decode(sample.input_ids), tok.decode(learned)


# -- text ---------------------------------------------------------------------
def test_text_tokens_all_learned():
    tok = ByteTokenizer()
    s = TextStrategy(data_options(), tok).encode({"text": "héllo\n\nworld", "other": 1})
    assert s.input_ids == list("héllo\n\nworld".encode())
    assert s.loss_mask == [1] * len(s.input_ids)


def test_custom_text_key_reads_that_column_whatever_else_is_there():
    tok = ByteTokenizer()
    opts = data_options({"custom_text_key": "code"})
    row = {"code": "x = 1", "text": "not me", "instruction": "nor me"}
    s = TextStrategy(opts, tok).encode(row)
    assert s.input_ids == tok.encode("x = 1") and s.loss_mask == [1] * 5


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"text": None}, "column 'text' is None"),
        ({"text": 7}, "column 'text' holds int, not text"),
        ({"other": "x"}, "column 'text' is missing"),
        ({"text": ""}, "column 'text' is empty"),
        ({"text": ["a"]}, "column 'text' holds list, not text"),
    ],
)
def test_text_bad_cells_are_bad_rows(row, reason):
    with pytest.raises(BadRow, match=reason):
        TextStrategy(data_options(), ByteTokenizer()).encode(row)


# -- prompt / completion ------------------------------------------------------
def test_prompt_completion_masks_are_target_aligned():
    tok = PairTokenizer()
    row = {
        "prompt": "What is the dominant emotion of the user? I am happy. Output:",
        "completion": " Happy<|endoftext|>",
    }
    s = PromptCompletionStrategy(data_options(), tok).encode(row)
    p, c = tok.encode(row["prompt"]), tok.encode(row["completion"])
    assert s.input_ids == p + c
    # No prompt token is learned; every completion token is, the first included.
    assert s.loss_mask == [0] * len(p) + [1] * len(c)
    assert s.loss_mask[len(p)] == 1


def test_disable_prompt_completion_mask_learns_everything():
    tok = ByteTokenizer()
    opts = data_options({"disable_prompt_completion_mask": True})
    s = PromptCompletionStrategy(opts, tok).encode({"prompt": "Q?", "completion": " A"})
    assert s.input_ids == tok.encode("Q?") + tok.encode(" A") and s.loss_mask == [1] * 4


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"prompt": None, "completion": "a"}, "column 'prompt' is None"),
        ({"prompt": "q", "completion": 3.5}, "column 'completion' holds float"),
        ({"prompt": "q"}, "column 'completion' is missing"),
        ({"prompt": "", "completion": ""}, "are empty"),
    ],
)
def test_prompt_completion_bad_cells(row, reason):
    with pytest.raises(BadRow, match=reason):
        PromptCompletionStrategy(data_options(), ByteTokenizer()).encode(row)


def test_prompt_completion_flag_must_be_boolean():
    with pytest.raises(ConfigError, match="disable_prompt_completion_mask"):
        PromptCompletionStrategy(data_options({"disable_prompt_completion_mask": "yes"}), ByteTokenizer())


# -- multi column -------------------------------------------------------------
DOLLY = {
    "category": "closed_qa",
    "instruction": "When did Virgin Australia start operating?",
    "input": "Virgin Australia, the trading ....",
    "output": "Virgin Australia commenced services on ...",
}
SEED_RENDERING = textwrap.dedent(
    """\
    Instruction:
    When did Virgin Australia start operating?

    Input:
    Virgin Australia, the trading ....

    Output:
    Virgin Australia commenced services on ..."""
)
SEED_YAML = r"""
data:
  multi_column_keys: ['instruction', 'input', 'output']
  multi_column_prefix: ['Instruction:\n', 'Input:\n', 'Output:\n']
  multi_column_train_mask: [true, false, true]
  multi_column_separator: '\n\n'
"""


@pytest.mark.parametrize("section", [{}, yaml.safe_load(SEED_YAML)["data"]], ids=["defaults", "seed-yaml"])
def test_multi_column_renders_the_seed_example(section):
    tok = ByteTokenizer()
    s = MultiColumnStrategy(data_options(section), tok).encode(DOLLY)
    text, learned = rendered(s, tok)
    assert text == SEED_RENDERING
    # Everything is learned except the input column's own tokens.
    assert learned == SEED_RENDERING.replace(DOLLY["input"], "")


def test_multi_column_pieces_are_tokenised_apart():
    tok = PairTokenizer()
    s = MultiColumnStrategy(data_options(), tok).encode(DOLLY)
    e = tok.encode
    expected = (
        e("Instruction:\n") + e(DOLLY["instruction"]) + e("\n\n")
        + e("Input:\n") + e(DOLLY["input"]) + e("\n\n")
        + e("Output:\n") + e(DOLLY["output"])
    )
    masked = len(e("Instruction:\n") + e(DOLLY["instruction"]) + e("\n\n") + e("Input:\n"))
    assert s.input_ids == expected
    assert expected != e(SEED_RENDERING)  # the boundaries matter for this tokenizer
    n_input = len(e(DOLLY["input"]))
    assert s.loss_mask == [1] * masked + [0] * n_input + [1] * (len(expected) - masked - n_input)


def test_multi_column_skips_empty_and_missing_columns():
    tok = ByteTokenizer()
    strat = MultiColumnStrategy(data_options(), tok)
    s = strat.encode({"instruction": "Do it", "input": "", "output": "Done"})
    assert rendered(s, tok) == ("Instruction:\nDo it\n\nOutput:\nDone",) * 2
    # A single usable column is enough (per-dataset detection, as the seed says).
    s = strat.encode({"output": "Only", "input": None})
    assert rendered(s, tok)[0] == "Output:\nOnly"


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"instruction": "", "input": None}, "no text in any of the columns instruction, input, output"),
        ({"instruction": "a", "input": 5, "output": "b"}, "column 'input' holds int"),
    ],
)
def test_multi_column_bad_rows(row, reason):
    with pytest.raises(BadRow, match=reason):
        MultiColumnStrategy(data_options(), ByteTokenizer()).encode(row)


def test_multi_column_null_prefix_entry_means_none_at_that_position():
    tok = ByteTokenizer()
    opts = data_options(
        {
            "multi_column_keys": ["a", "b", "c"],
            "multi_column_prefix": ["A: ", None, "C: "],
            "multi_column_suffix": [None, " <b", None],
            "multi_column_train_mask": [False, True, True],
            "multi_column_separator": " | ",
        }
    )
    s = MultiColumnStrategy(opts, tok).encode({"a": "1", "b": "2", "c": "3"})
    assert rendered(s, tok) == ("A: 1 | 2 <b | C: 3", "A:  | 2 <b | C: 3")


def test_three_renamed_keys_keep_the_seed_layout():
    """The seed's Instruction/Input/Output example with other column names and only the keys set."""
    tok = PairTokenizer()
    row = {"task": DOLLY["instruction"], "context": DOLLY["input"], "reply": DOLLY["output"]}
    s = MultiColumnStrategy(data_options({"multi_column_keys": ["task", "context", "reply"]}), tok).encode(row)
    e = tok.encode
    head = e("Instruction:\n") + e(row["task"]) + e("\n\n") + e("Input:\n")
    tail = e("\n\n") + e("Output:\n") + e(row["reply"])
    assert s.input_ids == head + e(row["context"]) + tail
    assert s.loss_mask == [1] * len(head) + [0] * len(e(row["context"])) + [1] * len(tail)
    # the same as the seed's own keys with every list written out
    seed = MultiColumnStrategy(data_options(yaml.safe_load(SEED_YAML)["data"]), tok).encode(DOLLY)
    assert (s.input_ids, s.loss_mask) == (seed.input_ids, seed.loss_mask)


def test_other_key_counts_must_write_out_prefix_and_train_mask():
    message = ("data.multi_column_keys has 2 keys, so the defaults for 3 keys do not apply: add "
               "data.multi_column_prefix and data.multi_column_train_mask, one entry per key, e.g. "
               "multi_column_prefix: ['Question:\\n', 'Answer:\\n'], multi_column_train_mask: [true, true]")
    section = {"multi_column_keys": ["question", "answer"]}
    with pytest.raises(ConfigError) as exc:
        MultiColumnStrategy(data_options(section), ByteTokenizer())
    assert str(exc.value) == message
    assert MultiColumnStrategy.check_options(data_options(section)) == [message]  # found when the config is read
    # with both lists given, the separator still defaults to the seed's blank line
    tok = ByteTokenizer()
    opts = data_options({**section, "multi_column_prefix": ["Q: ", None], "multi_column_train_mask": [False, True]})
    s = MultiColumnStrategy(opts, tok).encode({"question": "why", "answer": "because"})
    assert rendered(s, tok) == ("Q: why\n\nbecause", "Q: \n\nbecause")


@pytest.mark.parametrize(
    "section, message",
    [
        ({"multi_column_prefix": ["x", "y"]}, "multi_column_prefix has 2 entries but data.multi_column_keys has 3"),
        (
            {"multi_column_keys": ["a", "b"], "multi_column_train_mask": [True]},
            "multi_column_train_mask has 1 entries but data.multi_column_keys has 2",
        ),
    ],
)
def test_multi_column_config_errors_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        MultiColumnStrategy(data_options(section), ByteTokenizer())
    with pytest.raises(ConfigError, match=message):  # found at detection time as well
        pick_strategy(["text"], data_options(section), None)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"multi_column_train_mask": [True, 0, True]},
         "data.multi_column_train_mask must be a list with true or false per key, got [True, 0, True]; "
         "entry 1 is 0, not true or false"),
        ({"multi_column_keys": "instruction"}, "data.multi_column_keys must be a list of column names, got 'instruction'"),
        ({"multi_column_keys": ["a", ""]}, "data.multi_column_keys must be a list of column names, got ['a', '']"),
        ({"multi_column_suffix": ["", 3, ""]},
         "data.multi_column_suffix must be a list with a string or null per key, got ['', 3, '']; "
         "entry 1 is 3, not a string or null"),
    ],
)
def test_multi_column_wrong_types_are_found_when_the_options_are_read(section, message):
    # the declarations check each key's type, so the strategy never sees such a value
    with pytest.raises(ConfigError) as exc:
        data_options(section)
    assert str(exc.value) == f"test.yaml: {message}"


def test_empty_keys_disable_multi_column():
    opts = data_options({"multi_column_keys": []})
    assert pick_strategy(["instruction", "output", "text"], opts, None) is TextStrategy
    with pytest.raises(ConfigError, match="turns it off"):
        MultiColumnStrategy(opts, ByteTokenizer())


def test_escapes_single_quoted_yaml_become_newlines():
    section = yaml.safe_load(SEED_YAML)["data"]
    assert section["multi_column_separator"] == "\\n\\n"  # what YAML alone gives
    opts = data_options(section)
    assert opts["multi_column_separator"] == "\n\n"
    assert opts["multi_column_prefix"] == ["Instruction:\n", "Input:\n", "Output:\n"]


# -- batching -----------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, rows",
    [
        (TextStrategy, [{"text": "ab"}, {"text": None}, {"text": "ünï"}, {"text": ""}]),
        (PromptCompletionStrategy, [{"prompt": "p1", "completion": "c1"}, {"prompt": 1, "completion": "x"}]),
        (MultiColumnStrategy, [DOLLY, {"instruction": None}, {"output": "o", "input": "i"}]),
    ],
)
def test_encode_batch_equals_encode_with_one_tokenizer_call(cls, rows):
    tok = PairTokenizer()
    strat = cls(data_options(), tok)
    batch = strat.encode_batch(rows)
    assert tok.batch_calls == 1
    assert len(batch) == len(rows)
    for row, got in zip(rows, batch):
        try:
            want = strat.encode(row)
        except BadRow as exc:
            assert isinstance(got, BadRow) and str(got) == str(exc)
        else:
            assert isinstance(got, Sample)
            assert (got.input_ids, got.loss_mask) == (want.input_ids, want.loss_mask)


# -- detection ----------------------------------------------------------------
@pytest.mark.parametrize(
    "columns, section, expected",
    [
        (["text"], {}, TextStrategy),
        (["prompt", "completion", "text"], {}, PromptCompletionStrategy),
        (["instruction", "prompt", "completion", "text"], {}, MultiColumnStrategy),
        (["output", "text"], {}, MultiColumnStrategy),  # any one key is enough (seed wording)
        (["prompt", "text"], {}, TextStrategy),
        (["code", "instruction", "prompt", "completion"], {"custom_text_key": "code"}, TextStrategy),
        (["q", "text"], {"multi_column_keys": ["q", "a"], "multi_column_prefix": ["Q", "A"],
                         "multi_column_train_mask": [True, True]}, MultiColumnStrategy),
    ],
)
def test_detection_order(columns, section, expected):
    assert pick_strategy(columns, data_options(section), None) is expected


def test_custom_text_key_absent_is_an_error_with_suggestion():
    with pytest.raises(DataError, match="custom_text_key is 'bingo'.*Did you mean 'bing'"):
        pick_strategy(["bing", "instruction"], data_options({"custom_text_key": "bingo"}), None)


def test_no_strategy_fits_lists_columns_and_expectations():
    with pytest.raises(DataError) as info:
        pick_strategy(["foo", "bar"], data_options(), None)
    msg = str(info.value)
    assert "['foo', 'bar']" in msg
    assert "multi_column needs any of instruction, input, output" in msg
    assert "prompt_completion needs prompt and completion" in msg
    assert "text needs text (or set data.custom_text_key)" in msg
    assert "Set data.strategy" in msg


def test_forced_strategy_and_unknown_name():
    opts = data_options()
    assert pick_strategy(["instruction", "text"], opts, "text") is TextStrategy
    with pytest.raises(UnknownNameError, match="Did you mean 'prompt_completion'"):
        pick_strategy(["text"], opts, "prompt_complete")


class DialogStrategy(Strategy):
    """Third-party test strategy: a 'dialog' column, detected before the built-ins."""

    name = "dialog"
    detect_priority = 5

    @classmethod
    def matches(cls, columns, options):
        return "dialog" in columns

    @classmethod
    def expects(cls, options):
        return "needs dialog"

    def encode(self, row):
        ids = self.tokenizer.encode(row["dialog"])
        return Sample(ids, [1] * len(ids))


class HiddenStrategy(DialogStrategy):
    """Third-party test strategy that is never auto-detected."""

    name = "hidden"

    @classmethod
    def matches(cls, columns, options):
        return False

    @classmethod
    def expects(cls, options):
        return ""


class ThirdParty:
    @hookimpl
    def register_strategies(self):
        return [DialogStrategy, HiddenStrategy]


def test_third_party_strategies_detect_and_can_be_forced():
    plugins.current().register(ThirdParty(), name="third-party")
    opts = data_options()
    assert pick_strategy(["dialog", "instruction"], opts, None) is DialogStrategy
    assert pick_strategy(["text"], opts, "hidden") is HiddenStrategy
    with pytest.raises(DataError, match=r"dialog needs dialog;.*hidden is not auto-detected \(set data.strategy: hidden\)"):
        pick_strategy(["nothing"], opts, None)


def test_builtins_are_registered_with_docstrings_and_documented():
    doc = (REPO / "docs" / "config.md").read_text()
    for cls in BUILTINS:
        assert plugins.strategies().get(cls.name) is cls
        assert cls.__doc__
        for opt in cls.options:
            assert opt.help and f"`{opt.name}`" in doc


# -- golden, with the real world tokenizer -----------------------------------
def test_seed_multi_column_example_with_world_tokenizer():
    from rwkv_plug.data.tokenizer import load_tokenizer

    tok = load_tokenizer("world", {})
    section = yaml.safe_load(SEED_YAML)["data"]
    s = MultiColumnStrategy(data_options(section), tok).encode(DOLLY)
    assert tok.decode(s.input_ids) == SEED_RENDERING
    e = tok.encode
    before = e("Instruction:\n") + e(DOLLY["instruction"]) + e("\n\n") + e("Input:\n")
    n_input = len(e(DOLLY["input"]))
    assert s.input_ids[len(before) : len(before) + n_input] == e(DOLLY["input"])
    assert s.loss_mask == [1] * len(before) + [0] * n_input + [1] * (len(s) - len(before) - n_input)
    assert e("\n\n") == [261]  # the separator is world's single "\n\n" token
