"""The messages strategy's Arrow fast path against its flat and per-row paths.

``encode_arrow`` reads the messages column of a pyarrow table (as preload
hands it batches) column-wise; it must give the same ids, masks and row
offsets as ``encode_flat`` on the same rows as Python dicts, and skip the
same rows with the same reasons, or decline the table (None).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from rwkv_plug.builtin_strategies.messages import MessagesStrategy
from rwkv_plug.core.interfaces import BadRow
from test_messages_flat import SHAREGPT_ROLE, _BosTokenizer, _content
from test_strategy_messages import options

pytestmark = pytest.mark.usefixtures("offline_data")

#: One kind of flaw per reason the per-row path gives, each found in the varied table below.
REASONS = ["is None", "is an empty list", "is NoneType, not a mapping", "has unknown role",
           "has no '", "has neither 'role' nor 'from'", "no message is learned"]


def world():
    from rwkv_plug.data.tokenizer import load_tokenizer

    return load_tokenizer("world", {})


def arrow_row(rng: random.Random, shape: str, uniform: bool = False) -> dict:
    """A conversation whose values Arrow can type (bool flags, text system cells), now and
    then with a flaw that skips it. ``shape``: openai, sharegpt, or mixed (both per message).
    ``uniform``: every message has the same keys (``datasets`` reads messages whose keys
    differ as JSON text, not as a struct)."""
    draw = rng.random()
    if draw < 0.03:
        return {"messages": None, "system": "S"}
    if draw < 0.06:
        return {"messages": [], "system": None}
    messages: list = []
    for _ in range(rng.randint(1, 6)):
        role = rng.choice(["user", "assistant", "assistant", "user", "system"])
        sharegpt = shape == "sharegpt" or (shape == "mixed" and rng.random() < 0.5)
        keys = ("from", "value") if sharegpt else ("role", "content")
        m: dict = {keys[0]: SHAREGPT_ROLE[role] if sharegpt else role, keys[1]: _content(rng)}
        flaw = rng.random()
        if flaw < 0.02:
            m[keys[0]] = "robot"  # unknown role
        elif flaw < 0.04:
            m[keys[1]] = None  # no content
        elif flaw < 0.05:
            m = None  # not a mapping
        elif flaw < 0.06:
            m = {keys[0]: None, keys[1]: "orphan"} if uniform else {keys[1]: "orphan"}  # neither role nor from
        elif flaw < 0.2:
            m["train"] = rng.random() < 0.5
        if uniform and m is not None:
            m.setdefault("train", None)
        messages.append(m)
    system = rng.random()
    return {"messages": messages, "system": _content(rng) if system < 0.4 else None if system < 0.5 else ""}


def chunked(rows: list[dict], cut: int) -> pa.Table:
    """The rows as a table of two chunks, sliced so neither starts at 0 (as preload's batches)."""
    table = pa.Table.from_pylist([{"messages": None, "system": None}] * 3 + rows)
    table = pa.concat_tables([table.slice(0, cut + 3), table.slice(cut + 3)])
    return table.slice(3)


def assert_same(strategy: MessagesStrategy, table: pa.Table) -> dict[int, BadRow]:
    """``encode_arrow(table)`` equals ``encode_flat`` of its rows; returns the skipped rows."""
    got = strategy.encode_arrow(table)
    assert got is not None, "the Arrow path declined"
    rows = table.to_pylist()
    want = strategy.encode_flat(rows)
    assert got.ids.dtype.name == "int32" and got.mask.dtype.name == "int8" and got.offsets.dtype.name == "int64"
    assert got.offsets.tolist() == want.offsets.tolist()
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.mask, want.mask)
    assert {i: str(e) for i, e in got.bad.items()} == {i: str(e) for i, e in want.bad.items()}
    for i in range(0, len(rows), 7):  # and the per-row path, on some rows
        a, b = int(got.offsets[i]), int(got.offsets[i + 1])
        try:
            sample = strategy.encode(rows[i])
        except BadRow as exc:
            assert str(got.bad[i]) == str(exc) and a == b
            continue
        assert got.ids[a:b].tolist() == sample.input_ids and got.mask[a:b].tolist() == sample.loss_mask
    return got.bad


@pytest.mark.parametrize("section", [
    {},
    {"messages_train_end_of_turn": False},
    {"messages_train_roles": ["user", "assistant"], "messages_turn_end": "<end>"},
    {"messages_role_names": {"system": "S", "user": "Q", "assistant": "A"}, "messages_system_column": None},
    {"messages_train_roles": ["system", "assistant"]},
], ids=["defaults", "end-of-turn-unlearned", "users-learned+own-turn-end", "renamed+no-system-column",
        "system-learned"])
@pytest.mark.parametrize("shape", ["openai", "sharegpt", "mixed"])
def test_the_arrow_path_equals_the_flat_path_on_a_varied_table(section, shape):
    rng = random.Random(99)
    rows = [arrow_row(rng, shape) for _ in range(400)]
    if shape == "sharegpt":
        rows = [{"conversations": r.pop("messages"), **r} for r in rows]
        table = pa.Table.from_pylist(rows)
    else:
        table = chunked(rows, 150)
    strategy = MessagesStrategy(options(section), world())
    bad = assert_same(strategy, table)
    # varied enough to mean something: most rows kept, every kind of flaw skips some
    assert 200 < len(rows) - len(bad) < 400
    reasons = [str(e) for e in bad.values()]
    for reason in REASONS:
        if reason != "no message is learned" or "user" not in section.get("messages_train_roles", []):
            assert any(reason in r for r in reasons), f"no row skipped for {reason!r}"


@pytest.mark.parametrize("part_bytes", [1, 500])
def test_spans_tokenised_in_many_parts(part_bytes, monkeypatch):
    from rwkv_plug.builtin_strategies import messages_arrow

    monkeypatch.setattr(messages_arrow, "PART_BYTES", part_bytes)
    rng = random.Random(11)
    assert_same(MessagesStrategy(options(), world()), chunked([arrow_row(rng, "mixed") for _ in range(200)], 70))


def test_system_cells_a_tokenizer_with_a_start_token_and_large_strings():
    """The system column becomes the first message unless the list has its own; an empty
    content is no piece even for a tokenizer that gives "" a token; large_string columns."""
    rows = [{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}],
             "system": "Be brief."},
            {"messages": [{"role": "system", "content": "own"}, {"role": "assistant", "content": ""}],
             "system": "ignored"},
            {"messages": [{"role": "assistant", "content": "é🙂 中文"}], "system": ""}] * 30
    table = pa.Table.from_pylist(rows)
    strategy = MessagesStrategy(options(), _BosTokenizer())
    assert strategy.fast_paths() == frozenset({"flat", "arrow"})
    assert_same(strategy, table)
    first = strategy.encode_arrow(table)
    want = strategy.encode(rows[0])
    # system, user, assistant: 3 labels, 3 ends, 2 contents (the user's empty one has no start token)
    assert want.input_ids.count(0) == 8
    assert first.ids[:first.offsets[1]].tolist() == want.input_ids
    large = pa.Table.from_pylist(rows, schema=pa.schema({
        "messages": pa.large_list(pa.struct({"role": pa.large_string(), "content": pa.large_string()})),
        "system": pa.string()}))
    assert_same(MessagesStrategy(options(), world()), large)


@pytest.mark.parametrize("shape", ["openai", "mixed"])
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
@pytest.mark.parametrize("block", [None, 64], ids=["one-block", "many-blocks"])
def test_messages_stored_as_json_text_read_as_their_python_rows(shape, separators, block, monkeypatch):
    """``datasets`` stores messages whose keys differ as JSON texts (``arrow.json``): parsed
    column-wise, they give what ``encode_flat`` gives on the rows it formats (parsed dicts)."""
    from rwkv_plug.builtin_strategies import messages_arrow

    if block:
        monkeypatch.setattr(messages_arrow, "JSON_BLOCK", block)  # the reader's threads, each on some lines
    rng = random.Random(3)
    rows = [arrow_row(rng, shape) for _ in range(300)]
    rows[5]["messages"] = ["a message that is text", *rows[5]["messages"]]  # not a mapping
    texts = [None if r["messages"] is None else
             [None if m is None else json.dumps(m, separators=separators) for m in r["messages"]] for r in rows]
    lists = pa.array(texts, pa.list_(pa.string()))
    json_lists = pa.ListArray.from_arrays(lists.offsets, pa.ExtensionArray.from_storage(pa.json_(), lists.values),
                                          mask=lists.is_null())
    table = pa.table({"messages": json_lists, "system": pa.array([r["system"] for r in rows])})
    strategy = MessagesStrategy(options({"messages_train_roles": ["system", "assistant"]}), world())
    got = strategy.encode_arrow(table)
    assert got is not None
    decoded = [{"messages": None if t is None else [None if m is None else json.loads(m) for m in t],
                "system": r["system"]} for t, r in zip(texts, rows)]
    want = strategy.encode_flat(decoded)
    assert got.offsets.tolist() == want.offsets.tolist()
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.mask, want.mask)
    assert {i: str(e) for i, e in got.bad.items()} == {i: str(e) for i, e in want.bad.items()}
    assert "is str, not a mapping" in str(got.bad[5]) and 150 < len(rows) - len(got.bad) < 300


def test_tables_with_no_row_or_no_good_row():
    schema = pa.schema({"messages": pa.list_(pa.struct({"role": pa.string(), "content": pa.string()})),
                        "system": pa.string()})
    strategy = MessagesStrategy(options(), world())
    for rows in ([], [{"messages": [], "system": None}],
                 [{"messages": None, "system": "x"}, {"messages": [{"role": "user", "content": "hi"}], "system": ""}]):
        bad = assert_same(strategy, pa.Table.from_pylist(rows, schema=schema))
        assert len(bad) == len(rows)


def test_the_arrow_path_declines_tables_it_does_not_read():
    strategy = MessagesStrategy(options(), world())
    ok = [{"role": "assistant", "content": "hi"}]
    declined = [
        pa.table({"messages": pa.array([["a", "b"]])}),  # a list of strings, not of messages
        pa.Table.from_pylist([{"messages": ok, "system": 7}]),  # a system column that is not text
        pa.Table.from_pylist([{"messages": [{**ok[0], "train": "yes"}]}]),  # a flag that is not a bool
        pa.Table.from_pylist([{"messages": ok, "conversations": ok}]),  # rows could read either column
    ]
    for table in declined:
        assert strategy.encode_arrow(table) is None, table.schema
    for bad_json in ('{"role": "user", "content": ["a", "list"]}', '{"role": "user", "train": "yes"}'):
        lists = pa.array([[bad_json]], pa.list_(pa.string()))
        json_lists = pa.ListArray.from_arrays(lists.offsets, pa.ExtensionArray.from_storage(pa.json_(), lists.values))
        assert strategy.encode_arrow(pa.table({"messages": json_lists})) is None, bad_json
    named = MessagesStrategy(options({"messages_column": "chat"}), world())
    assert named.encode_arrow(pa.Table.from_pylist([{"chat": ok}])) is not None
    assert named.encode_arrow(pa.Table.from_pylist([{"messages": ok}])) is None


def test_a_subclass_that_reads_rows_its_own_way_gets_no_arrow_path():
    class Shouting(MessagesStrategy):
        def turns(self, row):
            return [t._replace(content=t.content.upper()) for t in super().turns(row)]

    class OwnFlat(MessagesStrategy):
        def encode_flat(self, rows):
            return super().encode_flat(rows)

    table = pa.Table.from_pylist([{"messages": [{"role": "assistant", "content": "hi"}]}])
    assert Shouting(options(), world()).fast_paths() == frozenset()
    assert Shouting(options(), world()).encode_arrow(table) is None
    assert OwnFlat(options(), world()).fast_paths() == frozenset({"flat"})
    assert OwnFlat(options(), world()).encode_arrow(table) is None


@pytest.mark.parametrize("uniform", [True, False], ids=["structs", "json-texts"])
def test_the_data_build_uses_the_arrow_path_and_gives_the_same_dataset(tmp_path, monkeypatch, uniform):
    """Through preload (the in-process path hands Arrow batches): the same splits and the same
    summary of skipped rows as with the Arrow path turned off. Messages whose keys differ
    reach the strategy as JSON texts."""
    from rwkv_plug.data import in_process
    from rwkv_plug.data.pipeline import prepare_dataset

    rng = random.Random(7)
    rows = [arrow_row(rng, "openai", uniform=uniform) for _ in range(600)]
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(world(), "threads", 2)  # the in-process path, as on 2+ cores
    monkeypatch.setattr(in_process, "BATCH_BYTES", 1)
    monkeypatch.setattr(in_process, "MIN_BATCH_ROWS", 150)  # several batches
    calls = []
    real = MessagesStrategy.encode_arrow

    def spy(self, table):
        out = real(self, table)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(MessagesStrategy, "encode_arrow", spy)

    def build(name: str):
        lines: list[str] = []
        cfg = {"data_path": str(tmp_path / name), "source": str(src), "tokenizer": "world", "test_split": 20}
        dd, _ = prepare_dataset(cfg, force=True, log=lines.append)
        return {s: dd[s].with_format("arrow")[:] for s in ("train", "test")}, lines[1:]

    fast, fast_log = build("fast")
    assert len(calls) >= 4 and all(calls)  # every batch (the streamed JSON Lines reader may cut one more)
    monkeypatch.setattr(MessagesStrategy, "encode_arrow", lambda self, t: None)
    slow, slow_log = build("slow")
    for split in ("train", "test"):
        assert fast[split].num_rows > 0 and fast[split].equals(slow[split]), f"{split} differs"
    assert fast_log == slow_log  # the same rows skipped, for the same reasons
    assert any("unknown role" in line for line in fast_log) and any("is None" in line for line in fast_log)
