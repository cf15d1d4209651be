"""The Arrow fast path (world ``encode_spans`` + text ``encode_arrow`` +
``Encoder.call_arrow``) and the rechunker's per-document stream give the same
output as the paths they replace (``encode_flat`` on Python strings,
``join_documents``).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from rwkv_plug.builtin_strategies.text import TextStrategy
from rwkv_plug.data.encode import Encoder
from rwkv_plug.data.rechunk import Rechunker, join_documents
from rwkv_plug.data.tokenizer import load_tokenizer

from conftest import random_texts as texts



pytestmark = pytest.mark.usefixtures("offline_data")



def world():
    return load_tokenizer("world", {})


def spans_of(batch: list[str]) -> tuple[bytes, np.ndarray, np.ndarray]:
    raw = [t.encode("utf-8") for t in batch]
    lens = np.array([len(b) for b in raw], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    return b"".join(raw), starts, lens


def test_encode_spans_matches_encode_flat_native_and_python():
    from rwkv_plug.builtin_tokenizers.world import _PyTrie

    tok = world()
    batch = texts(1, 300, 400) + ["", "x" * 100_000]  # the big one makes it use threads
    want_ids, want_offsets = tok.encode_flat(batch)
    data, starts, lens = spans_of(batch)
    ids, offsets = tok.encode_spans(data, starts, lens)
    assert ids.dtype == np.int32 and offsets.dtype == np.int64
    assert ids.tobytes() == want_ids.tobytes() and offsets.tobytes() == want_offsets.tobytes()
    # spans in any order, from a buffer with other bytes around them
    order = np.arange(len(batch))[::-1].copy()
    ids, offsets = tok.encode_spans(b"zz" + data, starts[order] + 2, lens[order])
    rev_ids, rev_offsets = tok.encode_flat(batch[::-1])
    assert ids.tobytes() == rev_ids.tobytes() and offsets.tobytes() == rev_offsets.tobytes()
    slow = _PyTrie(tok._tokens)
    small = texts(2, 40)
    py_ids, py_offsets = slow.encode_spans(*spans_of(small))
    fast_ids, fast_offsets = tok.encode_flat(small)
    assert py_ids == fast_ids.tobytes() and py_offsets == fast_offsets.tobytes()
    with pytest.raises(ValueError, match="outside"):
        tok.encode_spans(data, starts + len(data), lens)


def _column(seed: int) -> list:
    column = texts(seed, 200) + ["a", "", "中"]
    column[17] = None
    column[60] = ""
    return column


@pytest.mark.parametrize("kind", ["string", "large_string", "sliced", "chunked"])
def test_text_encode_arrow_matches_encode_flat(kind):
    tok = world()
    column = _column(3)
    strategy = TextStrategy({"tokenizer": "world"}, tok)
    if kind == "sliced":  # an array that starts inside its buffers (offset != 0)
        arr = pa.array(["skipped", "too"] + column, type=pa.string()).slice(2)
        table = pa.table({"text": arr})
    elif kind == "chunked":
        table = pa.Table.from_batches([pa.record_batch({"text": pa.array(column[:90], pa.string())}),
                                       pa.record_batch({"text": pa.array(column[90:], pa.string())})])
    else:
        table = pa.table({"text": pa.array(column, type=getattr(pa, kind)())})
    got = strategy.encode_arrow(table)
    want = strategy.encode_flat([{"text": t} for t in column])
    assert got.ids.tobytes() == want.ids.tobytes()
    assert got.offsets.tobytes() == want.offsets.tobytes()
    assert got.mask is None and want.mask is None
    assert {i: str(e) for i, e in got.bad.items()} == {i: str(e) for i, e in want.bad.items()}
    assert str(got.bad[17]) == "column 'text' is None" and str(got.bad[60]) == "column 'text' is empty"


def test_encode_arrow_declines_where_the_row_path_decides():
    tok = world()
    strategy = TextStrategy({"tokenizer": "world"}, tok)
    assert strategy.encode_arrow(pa.table({"text": pa.array([1, 2])})) is None  # not strings
    assert strategy.encode_arrow(pa.table({"other": pa.array(["a"])})) is None  # no such column

    class Upper(TextStrategy):
        def pieces(self, row):
            return [(row["text"].upper(), True)]

    class NoFlat(TextStrategy):
        def encode_flat(self, rows):
            return None

    table = pa.table({"text": pa.array(["a", "b"])})
    assert Upper({"tokenizer": "world"}, tok).encode_arrow(table) is None
    assert NoFlat({"tokenizer": "world"}, tok).encode_arrow(table) is None


@pytest.mark.parametrize("over", [{}, {"data_prefix_skip_mask": 3},
                                  {"min_token_size": 4, "max_token_size": 30}])
def test_encoder_call_arrow_equals_call(over):
    tok = world()
    column = _column(4)
    table = pa.table({"text": pa.array(column, pa.string()), "other": pa.array(range(len(column)))})
    batch = table.to_pydict()
    indices = list(range(50, 50 + len(column)))
    cfg = {"tokenizer": "world", "data_prefix_skip_mask": 0, "min_token_size": -1, "max_token_size": -1, **over}
    enc = Encoder(TextStrategy, cfg, tok, row_offset=3)
    got = enc.call_arrow(table, indices, lambda: pytest.fail("the Arrow path declined"))
    assert got.equals(enc(batch, indices))
    mixed = pa.table({"text": pa.array([1, 2], pa.int64())})  # declines: the rows path runs
    want = enc({"text": [1, 2]}, [0, 1])
    assert enc.call_arrow(mixed, [0, 1], lambda: {"text": [1, 2]}).equals(want)


@pytest.mark.parametrize("sep", [[], [11], [261, 11, 5]])
def test_rechunker_stream_loop_matches_join_documents(sep, monkeypatch):
    rnd = np.random.default_rng(0)
    batches = []
    for _ in range(4):
        lengths = rnd.integers(0, 50, size=30).astype(np.int64)
        ids = rnd.integers(0, 65536, size=int(lengths.sum())).astype(np.int32)
        mask = rnd.integers(0, 2, size=len(ids)).astype(np.int8)
        batches.append((lengths, ids, mask))

    def chunks(loop_docs: int) -> pa.Table:
        monkeypatch.setattr(Rechunker, "LOOP_DOCS", loop_docs)
        out = Rechunker(64, sep, 2, "unused.arrow")
        for b in batches:
            out.feed(*b)
        res = out.finish()
        return res.dataset.with_format("arrow")[:], res.remainder

    loop, vector = chunks(10_000), chunks(0)
    assert loop[0].num_rows > 0 and loop[0].equals(vector[0]) and loop[1] == vector[1]
    # and both equal the stream computed from join_documents in one go
    ids, mask = join_documents(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]),
                               np.concatenate([b[2] for b in batches]), sep)
    n = len(ids) // 64
    flat = loop[0].column("input_ids").combine_chunks().flatten().to_numpy()
    assert flat.tolist() == ids[:n * 64].tolist()
    want_mask = mask[:n * 64].copy().reshape(n, 64)
    want_mask[:, :2] = 0
    got_mask = loop[0].column("loss_mask").combine_chunks().flatten().to_numpy()
    assert got_mask.tolist() == want_mask.ravel().tolist()


@pytest.mark.parametrize("data", [
    {"text_rechunk_force": True, "text_rechunk_size": 256, "data_prefix_skip_mask": 2},
    {"min_token_size": 3, "test_split": 5, "test_split_shuffle": True},
])
@pytest.mark.parametrize("batch_rows", [None, 97])
def test_whole_build_same_with_and_without_the_arrow_path(tmp_path, monkeypatch, data, batch_rows):
    """One batch, or many (the helper thread with batches queued), against one
    batch without the Arrow path."""
    from rwkv_plug.data import in_process, streamed
    from rwkv_plug.data.pipeline import prepare_dataset

    monkeypatch.setattr(streamed, "LEAD_BYTES", 0)  # the source parsed as one batch (it is tokenised as it is parsed)
    rows = [{"text": t} for t in texts(5, 3000, 120)]
    rows[5] = {"text": None}
    rows[9] = {"text": ""}
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(world(), "threads", 2)  # the in-process path, as on 2+ cores
    calls = []
    real = TextStrategy.encode_arrow
    monkeypatch.setattr(TextStrategy, "encode_arrow", lambda self, t: calls.append(1) or real(self, t))

    def build(name: str):
        lines: list[str] = []
        cfg = {"data_path": str(tmp_path / name), "source": str(src), "tokenizer": "world", **data}
        dd, _ = prepare_dataset(cfg, force=True, log=lines.append)
        return {s: dd[s].with_format("arrow")[:] for s in ("train", "test")}, lines[1:]

    least = {module: module.MIN_BATCH_ROWS for module in (in_process, streamed)}
    for module in least:
        monkeypatch.setattr(module, "BATCH_BYTES", 1 if batch_rows else 1 << 30)
        monkeypatch.setattr(module, "MIN_BATCH_ROWS", batch_rows or least[module])
    fast, fast_log = build("fast")
    assert len(calls) == (-(-3000 // batch_rows) if batch_rows else 1)
    for module in least:  # one batch
        monkeypatch.setattr(module, "BATCH_BYTES", 1 << 30)
        monkeypatch.setattr(module, "MIN_BATCH_ROWS", least[module])
    monkeypatch.setattr(TextStrategy, "encode_arrow", lambda self, t: None)
    slow, slow_log = build("slow")
    for split in ("train", "test"):
        assert fast[split].num_rows > 0 and fast[split].equals(slow[split]), f"{split} differs"
    assert fast_log == slow_log  # the same summary (the first line names the data path)


@pytest.mark.parametrize("data", [{}, {"text_rechunk_force": True, "text_rechunk_size": 64}])
def test_ids_outside_the_vocab_fail_the_build_and_publish_nothing(tmp_path, monkeypatch, data):
    """The id check runs beside the save (or, for rechunked splits, on the largest id of
    each chunk, kept as they are cut); its error still stops the build."""
    from rwkv_plug.builtin_tokenizers.world import WorldTokenizer
    from rwkv_plug.core.errors import DataError
    from rwkv_plug.data.pipeline import prepare_dataset

    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(6, 200)), encoding="utf-8")
    monkeypatch.setattr(WorldTokenizer, "vocab_size", property(lambda self: 300))
    out = tmp_path / "out"
    with pytest.raises(DataError, match="outside the tokenizer's vocab of 300"):
        prepare_dataset({"data_path": str(out), "source": str(src), "tokenizer": "world", **data},
                        log=lambda _m: None)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name not in ("src.jsonl",)]  # no staged/work left
