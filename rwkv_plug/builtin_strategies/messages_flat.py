"""The ``messages`` strategy's flat fast path (the rwkv layout): rows -> :class:`FlatSamples`.

Each message is three pieces: its role label, its content (with the leading
space; an empty content is a piece of no tokens) and the end of turn. Labels
and the end of turn are tokenised once by the strategy; the contents of all
rows are tokenised by the tokenizer's ``encode_flat``, and the pieces are
spliced together with one numpy gather, so no Python object is made per
token.

What is left per message is reading it. Two things keep that cheap: a loop
that handles the common, valid message in a few dict lookups (anything else
goes to ``MessagesStrategy.turns``, which gives the same turns or the
``BadRow`` with its reason), and overlap: the batch is read in parts, and
each part's contents are tokenised in a helper thread (the tokenizer releases
the GIL) while the next part is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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


class _Part:
    """The messages of some rows, read: per message its role index, whether it has text and
    whether it is learned; the texts to tokenise; messages per row (0 for a bad row)."""

    def __init__(self) -> None:
        self.roles: list[int] = []
        self.has_text: list[bool] = []
        self.learned: list[bool] = []
        self.texts: list[str] = []
        self.counts: list[int] = []


def encode_rwkv_flat(strategy: MessagesStrategy, rows: Sequence[Mapping[str, Any]]) -> FlatSamples:
    """``strategy.encode_batch(rows)`` in the rwkv layout, as one :class:`FlatSamples`."""
    role_index = {role: i for i, role in enumerate(strategy.labels)}
    bad: dict[int, BadRow] = {}
    n = len(rows)
    parts = max(1, min(PARTS, n // MIN_PART_ROWS))
    bounds = [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]
    read: list[_Part] = []
    tokens: list[Any] = []
    if parts == 1:
        read.append(_read(strategy, role_index, rows, 0, n, bad))
        tokens.append(flat_encode(strategy.tokenizer, read[0].texts))
    else:
        with ThreadPoolExecutor(1) as pool:
            for lo, hi in bounds:
                read.append(_read(strategy, role_index, rows, lo, hi, bad))
                tokens.append(pool.submit(flat_encode, strategy.tokenizer, read[-1].texts))
            tokens = [t.result() for t in tokens]
    return _assemble(strategy, read, tokens, bad)


def _read(strategy: MessagesStrategy, role_index: dict[str, int], rows: Sequence[Mapping[str, Any]],
          lo: int, hi: int, bad: dict[int, BadRow]) -> _Part:
    """Rows ``lo..hi`` read into a :class:`_Part`; bad rows go to ``bad`` (by batch index)."""
    out = _Part()
    roles, has_text, learned, texts, counts = out.roles, out.has_text, out.learned, out.texts, out.counts
    # raw role name -> (role index, learned by default), for the names that give a known role
    known = {raw: (role_index[role], role in strategy.trained) for raw, role in strategy.known.items()}
    fixed, system_column = strategy.column, strategy.system_column
    system_role = role_index.get("system")
    system_learned = "system" in strategy.trained
    for i in range(lo, hi):
        row = rows[i]
        row_roles: list[int] = []
        row_learned: list[bool] = []
        row_texts: list[str] = []
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
                row_roles.append(entry[0])
                row_learned.append(entry[1] if flag is None else flag)
                row_texts.append(content)
        if ok and system_column:
            system = row.get(system_column)
            if system is not None and system != "":
                if type(system) is not str:
                    ok = False  # turns() names the problem
                elif row_roles[0] != system_role:  # the list's own system message wins
                    row_roles.insert(0, system_role)
                    row_learned.insert(0, system_learned)
                    row_texts.insert(0, system)
        if not (ok and any(row_learned)):
            # the careful path: the same turns for an unusual but valid row, else the BadRow
            try:
                turns = strategy.turns(row)
            except BadRow as exc:
                bad[i] = exc
                counts.append(0)
                continue
            row_roles = [role_index[t.role] for t in turns]
            row_learned = [t.train for t in turns]
            row_texts = [t.content for t in turns]
        counts.append(len(row_roles))
        roles += row_roles
        learned += row_learned
        for text in row_texts:
            has_text.append(text != "")
            if text:
                texts.append(" " + text)
    return out


def _assemble(strategy: MessagesStrategy, read: list[_Part], tokens: list[Any],
              bad: dict[int, BadRow]) -> FlatSamples:
    """The pieces of every message spliced into one flat batch."""
    if len(read) == 1:
        text_ids, text_offsets = tokens[0]
    else:  # the parts' tokens back to back, their offsets shifted
        sizes = [len(ids) for ids, _ in tokens]
        shift = np.cumsum([0, *sizes[:-1]])
        text_ids = np.concatenate([ids for ids, _ in tokens]) if tokens else np.zeros(0, np.int32)
        text_offsets = np.concatenate([[0], *[off[1:] + s for (_, off), s in zip(tokens, shift)]]).astype(np.int64)
    def joined(field: str, dtype: Any) -> np.ndarray:  # one array of a list field over the parts
        arrays = [np.array(getattr(p, field), dtype=dtype) for p in read]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    role, has_text, train, per_row = (joined("roles", np.int64), joined("has_text", bool),
                                      joined("learned", np.int8), joined("counts", np.int64))
    count = len(role)
    n_texts = len(text_offsets) - 1
    text_of = np.cumsum(has_text) - 1  # each message's index among the texts (valid where has_text)
    safe = np.where(has_text, text_of, 0)
    text_start = np.where(has_text, text_offsets[:-1][safe], 0) if n_texts else np.zeros(count, np.int64)
    text_len = np.where(has_text, np.diff(text_offsets)[safe], 0) if n_texts else np.zeros(count, np.int64)
    fixed = [*strategy.labels.values(), strategy.turn_end]  # after the texts in the pool
    fixed_len = np.array([len(f) for f in fixed], dtype=np.int64)
    fixed_start = len(text_ids) + np.cumsum(fixed_len) - fixed_len
    pool = np.concatenate([np.asarray(text_ids, dtype=np.int32), np.array([t for f in fixed for t in f], dtype=np.int32)])
    # pieces in order: (message, [label, content, end]) flattened
    starts = np.stack([fixed_start[role], text_start, np.full(count, fixed_start[-1])], axis=1).ravel()
    lens = np.stack([fixed_len[role], text_len, np.full(count, fixed_len[-1])], axis=1).ravel()
    learn = np.stack([np.zeros_like(train), train, train * int(strategy.learn_end)], axis=1).ravel()
    ends = np.cumsum(lens)
    total = int(ends[-1]) if len(ends) else 0
    index = np.int32 if total + len(pool) < 2**31 else np.int64  # half the memory traffic when it fits
    # token j of piece p comes from pool[starts[p] + (j - where piece p begins in the output)]
    gather = np.repeat((starts - (ends - lens)).astype(index), lens)
    gather += np.arange(total, dtype=index)
    token_bounds = np.concatenate([[0], ends]).astype(np.int64)
    offsets = token_bounds[3 * np.concatenate([[0], np.cumsum(per_row)])]
    return FlatSamples(pool[gather], offsets, np.repeat(learn, lens), dict(sorted(bad.items())))
