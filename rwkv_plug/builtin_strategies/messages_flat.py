"""The ``messages`` strategy's flat fast path (the rwkv layout): rows -> :class:`FlatSamples`.

Preload uses it when the tokenizer does not read Arrow bytes, and for tables
the Arrow path (:mod:`~rwkv_plug.builtin_strategies.messages_arrow`) declines.

Each message is three pieces, each tokenised on its own: its role label
(``User:``), its content with the leading space, and the end of turn. All
three go to the tokenizer's ``encode_flat`` as texts, in row order, so the
ids it returns are already the batch's ids: nothing is spliced afterwards.
Tokenising the labels and ends of turn again costs a few bytes per message
in the tokenizer's threads, less than splicing cached ids in Python's one.
An empty content is the text ``""``; a tokenizer that gives ``""`` tokens (a
start token) has them dropped, as the per-row path has no piece for it.

The loss mask is built from the piece lengths the tokenizer returns (one
``np.repeat``) and the rows' offsets by indexing the piece offsets, so no
Python object is made per token.

What is left per message is reading it. Two things keep that cheap: a loop
that handles the common, valid message in a few dict lookups (anything else
goes to ``MessagesStrategy.turns``, which gives the same turns or the
``BadRow`` with its reason), and overlap: the batch is read in parts, each
part is tokenised in a helper thread (the tokenizer releases the GIL) while
the next is read, and its mask is built while the next is tokenised.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from rwkv_plug.builtin_strategies.pieces import flat_encode
from rwkv_plug.core.interfaces import BadRow, FlatSamples

if TYPE_CHECKING:
    from rwkv_plug.builtin_strategies.messages import MessagesStrategy

#: A batch is read in up to this many parts, each tokenised while the next is read.
PARTS = 8
#: Fewer rows than this per part are not worth a thread.
MIN_PART_ROWS = 32
#: Texts per message: label, content, end of turn.
PIECES = 3


class _Part:
    """The messages of some rows, read: the texts to tokenise (``PIECES`` per message),
    whether each message is learned, and the messages per row (0 for a bad row)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.learned: list[bool] = []
        self.counts: list[int] = []


def encode_rwkv_flat(strategy: MessagesStrategy, rows: Sequence[Mapping[str, Any]]) -> FlatSamples:
    """``strategy.encode_batch(rows)`` in the rwkv layout, as one :class:`FlatSamples`."""
    bad: dict[int, BadRow] = {}
    n = len(rows)
    parts = max(1, min(PARTS, n // MIN_PART_ROWS))
    bounds = [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]
    learn_end, tokenizer = int(strategy.learn_end), strategy.tokenizer
    empty_ids = strategy.empty_text_ids
    if parts == 1:
        part = _read(strategy, rows, 0, n, bad)
        done = [_layout(part, flat_encode(tokenizer, part.texts), learn_end, empty_ids)]
    else:
        with ThreadPoolExecutor(1) as pool:
            read: list[_Part] = []
            futures: list[Future] = []
            for lo, hi in bounds:  # each part is read while the ones before are tokenised
                read.append(_read(strategy, rows, lo, hi, bad))
                idle = not futures or futures[-1].done()
                started = threading.Event()
                futures.append(pool.submit(_tokenise, tokenizer, read[-1].texts, started))
                if idle:
                    # An idle helper needs the GIL to start, and would wait for it up to the switch
                    # interval (5 ms) while this thread reads on: let it into the tokenizer first.
                    started.wait()
            # and each part's mask is built while the ones after it are tokenised
            done = [_layout(part, future.result(), learn_end, empty_ids) for part, future in zip(read, futures)]
    return _join(done, bad)


def _read(strategy: MessagesStrategy, rows: Sequence[Mapping[str, Any]], lo: int, hi: int,
          bad: dict[int, BadRow]) -> _Part:
    """Rows ``lo..hi`` read into a :class:`_Part`; bad rows go to ``bad`` (by batch index)."""
    out = _Part()
    texts, learned, counts = out.texts, out.learned, out.counts
    labels, end = strategy.label_texts, strategy.turn_end_text
    trained = strategy.trained
    # raw role name -> (label text, learned by default), for the names that give a known role
    known = {raw: (labels[role], role in trained) for raw, role in strategy.known.items()}
    fixed, system_column = strategy.column, strategy.system_column
    system_label, system_learned = labels.get("system"), "system" in trained
    for i in range(lo, hi):
        row = rows[i]
        t0, m0 = len(texts), len(learned)  # where this row's texts and messages begin
        ok = type(row) is dict
        if ok:
            column = fixed or ("messages" if row.get("messages") is not None else
                               "conversations" if row.get("conversations") is not None else "messages")
            messages = row.get(column)
            ok = type(messages) is list and len(messages) > 0
        if ok:
            for m in messages:
                if type(m) is not dict:
                    ok = False
                    break
                raw = m.get("role")
                if raw is not None:
                    content = m.get("content")
                else:
                    raw, content = m.get("from"), m.get("value")
                entry = known.get(raw) if type(raw) is str else None
                flag = m.get("train")
                if entry is None or type(content) is not str or not (flag is None or flag is True or flag is False):
                    ok = False
                    break
                texts += (entry[0], " " + content if content else "", end)
                learned.append(entry[1] if flag is None else flag)
        if ok and system_column:
            system = row.get(system_column)
            if system is not None and system != "":
                if type(system) is not str:
                    ok = False  # turns() names the problem
                elif strategy.known[_raw_role(messages[0])] != "system":  # the list's own system message wins
                    texts[t0:t0] = (system_label, " " + system, end)
                    learned.insert(m0, system_learned)
        if not (ok and True in learned[m0:]):
            # the careful path: the same turns for an unusual but valid row, else the BadRow
            del texts[t0:], learned[m0:]
            try:
                turns = strategy.turns(row)
            except BadRow as exc:
                bad[i] = exc
                counts.append(0)
                continue
            for t in turns:
                texts += (labels[t.role], " " + t.content if t.content else "", end)
                learned.append(t.train)
        counts.append(len(learned) - m0)
    return out


def _tokenise(tokenizer: Any, texts: list[str], started: threading.Event) -> tuple[np.ndarray, np.ndarray]:
    """``flat_encode`` in the helper thread, saying when it starts."""
    started.set()  # this thread holds the GIL until the tokenizer releases it, microseconds from here
    return flat_encode(tokenizer, texts)


def _raw_role(message: dict) -> str:
    """The raw role name of a message the quick loop has read (as it reads it)."""
    raw = message.get("role")
    return message.get("from") if raw is None else raw


def _layout(part: _Part, tokens: tuple[np.ndarray, np.ndarray], learn_end: int,
            empty_ids: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A part's ``(ids, mask, row offsets)`` from its tokenised texts: the mask from the piece lengths."""
    ids, offsets = tokens
    lens = np.diff(offsets)
    if empty_ids:  # the tokenizer gives "" tokens (a start token), but an empty content is no piece at all
        empty = np.zeros(len(lens), dtype=bool)
        empty[1::PIECES] = [text == "" for text in part.texts[1::PIECES]]
        if empty.any():
            ids = ids[np.repeat(~empty, lens)]
            lens[empty] = 0
            offsets = np.concatenate([[0], np.cumsum(lens)])
    train = np.array(part.learned, dtype=np.int8)
    # per message: label never learned, content learned if the message is, end of turn too unless turned off
    learn = np.stack([np.zeros_like(train), train, train * np.int8(learn_end)], axis=1).ravel()
    mask = np.repeat(learn, lens)
    row_offsets = offsets[PIECES * np.concatenate([[0], np.cumsum(part.counts, dtype=np.int64)])]
    return ids, mask, row_offsets


def _join(done: list[tuple[np.ndarray, np.ndarray, np.ndarray]], bad: dict[int, BadRow]) -> FlatSamples:
    """The parts back to back, their row offsets shifted."""
    if len(done) == 1:
        ids, mask, offsets = done[0]
    else:
        ids = np.concatenate([d[0] for d in done])
        mask = np.concatenate([d[1] for d in done])
        shifts = np.cumsum([0, *(len(d[0]) for d in done[:-1])])
        offsets = np.concatenate([[0], *(d[2][1:] + s for d, s in zip(done, shifts))]).astype(np.int64)
    return FlatSamples(ids, offsets, mask, dict(sorted(bad.items())))
