"""The native one-string-column JSON Lines reader (data/_jsonl.c) against pyarrow's reader.

Whatever it reads must equal pyarrow's table; whatever is outside its shape (or that
pyarrow might read differently) must give None, so that pyarrow parses the batch.
"""

from __future__ import annotations

import json
import random
import sys

import pyarrow as pa
import pyarrow.json as paj
import pytest

from rwkv_plug.data import direct


def _pyarrow(buf: bytes) -> pa.Table:
    return paj.read_json(pa.BufferReader(buf), read_options=paj.ReadOptions(block_size=max(len(buf), 1 << 16)))


def _random_text(rng: random.Random) -> str:
    pieces = ["a", "Z", " ", "0", "~", '"', "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x01", "\x1f", "\x7f",
              "é", "ß", "€", "中文", "\u2028", "\ufeff", "😀", "𝄞", "\U0010fffd", "plain ascii words "]
    n = rng.choice([0, 1, 2, 7, 8, 9, 15, 16, 17, 40, 300])
    return "".join(rng.choice(pieces) for _ in range(n))


def _line(rng: random.Random, key: str, text: str) -> str:
    value = json.dumps(text, ensure_ascii=rng.random() < 0.5)
    k = json.dumps(key, ensure_ascii=False)
    return rng.choice(['{%s:%s}', '{ %s : %s }', '{\t%s:\t%s\t}', '  {%s: %s}  ']) % (k, value)


def test_the_native_reader_is_built():
    # CI machines have a compiler; without one the install still works (pyarrow parses)
    from rwkv_plug.data._jsonl import one_string_column  # noqa: F401


@pytest.mark.parametrize("seed", range(40))
def test_random_batches_equal_pyarrow(seed):
    rng = random.Random(seed)
    key = rng.choice(["text", "content", "é_key", "a b"])
    lines = [_line(rng, key, _random_text(rng)) for _ in range(rng.randint(1, 60))]
    buf = ("\n".join(lines) + ("\n" if rng.random() < 0.7 else "")).encode()
    got = direct._one_string_column(buf)
    assert got is not None, buf[:200]
    ref = _pyarrow(buf)
    assert got.schema.equals(ref.schema)
    assert got.equals(ref)
    assert direct._parse_json_batch(buf).equals(ref)


def test_every_position_of_a_special_byte_around_the_8_byte_steps():
    # the scan takes 8 bytes at a time: a quote, backslash, control or non-ASCII byte
    # at each offset of strings of every length up to 33 must still be seen
    lines = []
    for n in range(34):
        for at in range(n):
            for special in ['"', "\\", "\n", "é", "😀", "\u0001"]:
                text = "x" * at + special + "y" * (n - at - 1)
                lines.append(json.dumps({"text": text}, ensure_ascii=False))
    buf = ("\n".join(lines) + "\n").encode()
    got = direct._one_string_column(buf)
    assert got is not None
    assert got.equals(_pyarrow(buf))
    assert got.column("text").to_pylist() == [json.loads(x)["text"] for x in lines]


@pytest.mark.parametrize("buf", [
    b'{"text": "a", "id": "b"}\n',                 # two keys
    b'{"text": "a"}\n{"body": "b"}\n',             # a different key
    b'{"text": {"x": "a"}}\n',                     # nested
    b'{"text": 3}\n',                              # not a string
    b'{"text": null}\n',
    b'{"text": "a"}\n\n{"text": "b"}\n',           # a blank line
    b'{"text": "a"}\r\n{"text": "b"}\r\n',         # CRLF
    b'{"text": "\\ud800"}\n',                      # a lone high surrogate
    b'{"text": "\\ud800\\u0041"}\n',               # a high surrogate, then no low one
    b'{"text": "\\udc00"}\n',                      # a lone low surrogate
    b'{"text": "a\\u0000b"}\n',                    # NUL
    b'{"text": "a\\xb"}\n',                        # not an escape
    b'{"text": "a\\u12g4"}\n',                     # not hex
    b'{"text": "a\x01b"}\n',                       # a raw control byte
    b'{"text": "a\xffb"}\n',                       # not UTF-8
    b'{"text": "a\xed\xa0\x80b"}\n',               # an encoded surrogate
    b'{"text": "a\xc3"}\n',                        # a cut sequence
    b'{"te\\u0078t": "a"}\n',                      # an escaped key
    b'{"": "a"}\n',                                # an empty key
    b'[{"text": "a"}]\n',                          # an array
    b'{"text": "a}\n',                             # unterminated
    b'{"text": "a"} x\n',                          # something after the object
    b'{"text": "a"}{"text": "b"}\n',               # two objects on a line
    b'',                                           # nothing
    b'   \n',
])
def test_other_shapes_give_none_and_pyarrow_reads_them(buf):
    assert direct._one_string_column(buf) is None
    try:
        ref = _pyarrow(buf)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return  # pyarrow refuses it too: the direct reader falls back to load_dataset
    assert direct._parse_json_batch(buf).equals(ref)


@pytest.mark.parametrize("values", [
    ["2020-01-01"], ["2020-01-01T10:00", "0001-01-01"], ["9999-12-31T23:59:59Z"],
    ["2020\\u002d01-01T10"],                      # a timestamp once unescaped
    ["2020-01-01 10:00:00.123", "2020-13-01"],     # timestamp-like, read as strings
])
def test_columns_that_may_be_timestamps_are_left_to_pyarrow(values):
    # pyarrow reads a column of ISO 8601 strings as timestamp[s]; the native reader
    # leaves every batch whose values all look like dates to it
    buf = "".join('{"t": "%s"}\n' % v for v in values).encode()
    assert direct._one_string_column(buf) is None
    assert direct._parse_json_batch(buf).equals(_pyarrow(buf))


@pytest.mark.parametrize("values", [["2020-01-01", "hello"], ["note", "2020-01-01T10"], ["2020-01", "2020"], ["", ""]])
def test_one_value_that_is_no_timestamp_makes_a_string_column(values):
    buf = "".join('{"t": "%s"}\n' % v for v in values).encode()
    got = direct._one_string_column(buf)
    assert got is not None and got.equals(_pyarrow(buf))
    assert str(got.schema.field("t").type) == "string"


def test_without_the_native_module_pyarrow_parses(monkeypatch):
    buf = b'{"text": "a"}\n{"text": "b"}\n'
    monkeypatch.setitem(sys.modules, "rwkv_plug.data._jsonl", None)
    assert direct._one_string_column(buf) is None
    assert direct._parse_json_batch(buf).equals(_pyarrow(buf))


def test_memoryview_input_and_a_large_batch():
    rng = random.Random(7)
    lines = [json.dumps({"text": _random_text(rng) * 20}) for _ in range(3000)]
    buf = ("\n".join(lines) + "\n").encode()
    got = direct._one_string_column(memoryview(buf))
    assert got is not None and got.num_rows == 3000
    assert got.equals(_pyarrow(buf))
