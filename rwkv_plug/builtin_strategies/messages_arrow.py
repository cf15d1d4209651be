"""The ``messages`` strategy's Arrow fast path (the rwkv layout): a pyarrow table -> :class:`FlatSamples`.

The flat path (:mod:`~rwkv_plug.builtin_strategies.messages_flat`) reads
every message as a Python dict. Here the table's messages column
(``list<struct<role, content, ...>>``, or ``list<arrow.json>``: the JSON
texts ``datasets`` stores when the messages' keys differ, parsed by
pyarrow's JSON reader) is read a column at a time, with no Python object
per message:

1. read: the list column flattened to one array per field (role, content,
   from, value, train), one entry per message, and each message's row
   (from the list lengths);
2. check, with numpy: a row is kept when its list is there and not empty,
   every message is a mapping with a known role and a content, and some
   message is learned. A row that is not kept is read as Python and given
   to ``MessagesStrategy.turns``, whose ``BadRow`` is its reason: bad rows
   are few, and their reasons are then the per-row path's word for word;
3. render: pyarrow writes every message as ``label + " " + content + end``
   into one buffer (the system cells that become a leading message after
   them), so each message's three pieces (label, `` content``, end of
   turn) are three spans of it, the bytes the per-row path tokenises;
4. tokenise and lay out: the spans, in output order, go to the tokenizer's
   ``encode_spans`` (in parts of about ``PART_BYTES``), so its ids are the
   batch's ids as they come, and the mask is one ``np.repeat`` of each
   piece's learn flag over its token count.

Tables this path does not read (a column of another type, a field of an
unexpected type, both ``messages`` and ``conversations`` with no
``messages_column``) are declined: the pipeline then gives the rows to
``encode_flat``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rwkv_plug.core.interfaces import BadRow, FlatSamples

if TYPE_CHECKING:
    from rwkv_plug.builtin_strategies.messages import MessagesStrategy


#: Bytes of text per ``encode_spans`` call. One call over a whole batch of short spans costs
#: more than several: the world tokenizer's output buffer holds 4 bytes per byte of text, and
#: short spans touch every page of it.
PART_BYTES = 1 << 20
#: Bytes of JSON text per block of pyarrow's JSON reader (a block is a task for its threads).
JSON_BLOCK = 1 << 21
#: The fields read from a message stored as JSON text; others are skipped unparsed.
JSON_FIELDS = pa.schema([*((key, pa.string()) for key in ("role", "content", "from", "value")),
                         ("train", pa.bool_())])


class ArrowMismatch(RuntimeError):
    """The Arrow read flagged a row that ``MessagesStrategy.turns`` accepts: a bug here, so the
    pipeline says so once and encodes the batch with ``encode_flat`` instead."""


class _Read(NamedTuple):
    """A batch's messages, read and checked: per row and per message."""

    keep: np.ndarray  # (rows,) bool: the row is encoded
    counts: np.ndarray  # (rows,) int64: messages in the row's list (0 for a null list)
    role: np.ndarray  # (messages,) int64: index into the strategy's roles, -1 if unknown or absent
    train: np.ndarray  # (messages,) bool: learned
    text: pa.Array  # (messages,) the content (``value`` for a ShareGPT message), null where none
    inserted: np.ndarray  # (rows,) bool: the system cell becomes the row's first message
    system: pa.Array | None  # (rows,) the system column
    column: str  # the messages column
    json: bool  # its messages are JSON texts


def encode_rwkv_arrow(strategy: MessagesStrategy, table: pa.Table) -> FlatSamples | None:
    """``strategy.encode_flat`` of ``table``'s rows, or None to decline the table."""
    read = _read(strategy, table)
    if read is None:
        return None
    bad = _reasons(strategy, table, read)
    return _layout(strategy, read, bad)


# -- 1 and 2: read and check ---------------------------------------------------------------
def _read(strategy: MessagesStrategy, table: pa.Table) -> _Read | None:
    column = _messages_column(strategy, table.column_names)
    if column is None:
        return None
    lists = _one_chunk(table.column(column))
    kind = lists.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return None
    as_json = _is_json(kind.value_type)
    if not (as_json or pa.types.is_struct(kind.value_type)):
        return None
    n = len(lists)
    counts = _numpy(pc.fill_null(pc.list_value_length(lists), 0)).astype(np.int64)
    messages = pc.list_flatten(lists)  # skips null lists' values, as counts does
    m = len(messages)
    if as_json:
        messages = _parse_json(messages)
        if messages is None:
            return None
    fields = _struct_fields(messages, messages.type)
    texts = {key: _text_field(fields.get(key), m) for key in ("role", "content", "from", "value")}
    flag = fields.get("train")
    if any(t is None for t in texts.values()) or not (flag is None or pa.types.is_null(flag.type)
                                                      or pa.types.is_boolean(flag.type)):
        return None  # a field of another type: the per-row path names the problem
    raw, text = _role_and_text(texts)
    roles = list(strategy.names)
    role = _role_index(strategy, roles, raw)
    sane = _numpy(messages.is_valid()) & (role >= 0) & _numpy(text.is_valid())

    trained = np.array([r in strategy.trained for r in roles] + [False])  # [-1]: an unknown role
    train = trained[role]
    if flag is not None and not pa.types.is_null(flag.type) and flag.null_count < m:
        given = _numpy(flag.is_valid())
        train = np.where(given, _numpy(pc.fill_null(flag, False)), train)

    parent = np.repeat(np.arange(n), counts)
    flawed = np.bincount(parent[~sane], minlength=n) > 0
    keep = _numpy(lists.is_valid()) & (counts > 0) & ~flawed

    system = _system_column(strategy, table)
    if system is False:
        return None
    inserted = np.zeros(n, dtype=bool)
    if system is not None:
        present = _numpy(pc.fill_null(pc.binary_length(system), 0)) > 0
        first = np.full(n, -1, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        some = counts > 0
        first[some] = role[starts[some]]
        inserted = keep & present & (first != roles.index("system"))  # the list's own system message wins
    learned = np.bincount(parent[train & sane], minlength=n) > 0
    if "system" in strategy.trained:
        learned |= inserted
    keep &= learned
    inserted &= keep
    return _Read(keep, counts, role, train, text, inserted, system, column, as_json)


def _messages_column(strategy: MessagesStrategy, names: list[str]) -> str | None:
    """The column every row reads, or None when rows may read different ones (or it is absent)."""
    from rwkv_plug.builtin_strategies.messages import COLUMNS

    if strategy.column:
        return strategy.column if strategy.column in names else None
    present = [c for c in COLUMNS if c in names]
    # with one of them, a null cell reads as turns() reads it: a bad row, named below
    return present[0] if len(present) == 1 else None


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _numpy(array: pa.Array) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)


def _is_json(kind: pa.DataType) -> bool:
    """Whether a list's items are JSON texts: ``datasets`` stores messages whose keys differ
    (a ``train`` flag on some only, say) with its ``Json`` feature, as ``arrow.json``."""
    return isinstance(kind, pa.BaseExtensionType) and kind.extension_name == "arrow.json" \
        and pa.types.is_string(kind.storage_type)


def _parse_json(messages: pa.Array) -> pa.StructArray | None:
    """Messages stored as JSON texts, parsed by pyarrow's JSON reader into a struct array of
    :data:`JSON_FIELDS` (null where the text is null or not an object: such a row is then
    skipped, and ``turns`` names why); None (decline) when a field holds another type (a
    list for a content, say), which the reader refuses and the per-row path names."""
    import pyarrow.json as paj

    text = messages.storage
    # compact JSON, as datasets writes it: an object starts with "{" and holds no raw newline
    mapping = pc.fill_null(pc.starts_with(text, "{"), False)
    objects = pc.if_else(mapping, text, pa.scalar("{}", text.type))
    lines = pc.binary_join_element_wise(objects, pa.scalar("\n", text.type), pa.scalar("", text.type))
    if not len(lines):
        return pa.StructArray.from_arrays([pa.array([], f.type) for f in JSON_FIELDS], fields=list(JSON_FIELDS))
    end = int(np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset + len(lines)])
    data = lines.buffers()[2].slice(0, end)
    # blocks are parsed on the reader's threads; each must hold a whole line
    longest = int(pc.max(pc.binary_length(objects)).as_py() or 0) + 1
    try:
        parsed = paj.read_json(pa.BufferReader(data),
                               read_options=paj.ReadOptions(block_size=max(JSON_BLOCK, 2 * longest)),
                               parse_options=paj.ParseOptions(explicit_schema=JSON_FIELDS,
                                                              unexpected_field_behavior="ignore"))
    except pa.ArrowInvalid:  # "Column(/content) changed from string to array": the rows path decides
        return None
    if parsed.num_rows != len(text):
        raise ArrowMismatch(f"{len(text)} messages stored as JSON parsed as {parsed.num_rows}")
    columns = [_one_chunk(parsed.column(f.name)) for f in JSON_FIELDS]
    return pa.StructArray.from_arrays(columns, fields=list(JSON_FIELDS), mask=pc.invert(mapping))


def _struct_fields(messages: pa.Array, kind: pa.StructType) -> dict[str, pa.Array]:
    """The struct's fields by name, each null where its message is (``flatten`` merges that)."""
    names = [kind.field(i).name for i in range(kind.num_fields)]
    return dict(zip(names, messages.flatten()))


def _text_field(field: pa.Array | None, m: int) -> pa.Array | None:
    """A role or text field as a string array (all null if the struct lacks it), or None if it
    holds something else."""
    if field is None or pa.types.is_null(field.type):
        return pa.nulls(m, pa.string())
    if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
        return field
    return None


def _role_and_text(fields: dict[str, pa.Array]) -> tuple[pa.Array, pa.Array]:
    """Each message's raw role and text: ``role``/``content`` where ``role`` is set, else
    ``from``/``value`` (as ``MessagesStrategy._checked_turn`` chooses, by value)."""
    role, content, sender, value = (fields[k] for k in ("role", "content", "from", "value"))
    if sender.null_count == len(sender):
        return role, content  # the OpenAI shape: nothing to choose
    if role.null_count == len(role):
        return sender, value  # ShareGPT
    if len({a.type for a in fields.values()}) > 1:
        fields = {k: a.cast(pa.large_string()) for k, a in fields.items()}
        role, content, sender, value = (fields[k] for k in ("role", "content", "from", "value"))
    has_role = role.is_valid()
    return pc.if_else(has_role, role, sender), pc.if_else(has_role, content, value)


def _role_index(strategy: MessagesStrategy, roles: list[str], raw: pa.Array) -> np.ndarray:
    """Each message's role as an index into ``roles`` (after the role map); -1 for an unknown
    or absent one."""
    known = list(strategy.known)
    if not known:
        return np.full(len(raw), -1, dtype=np.int64)
    to_role = np.array([roles.index(strategy.known[r]) for r in known] + [-1], dtype=np.int64)
    found = _numpy(pc.fill_null(pc.index_in(raw, value_set=pa.array(known, type=raw.type)), -1))
    return to_role[found.astype(np.int64)]


def _system_column(strategy: MessagesStrategy, table: pa.Table) -> pa.Array | None | bool:
    """The system column as strings; None if there is none to read; False if it holds
    something else (the per-row path names the problem)."""
    name = strategy.system_column
    if not name or name not in table.column_names:
        return None
    array = _one_chunk(table.column(name))
    if pa.types.is_null(array.type):
        return None
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return array
    return False


def _reasons(strategy: MessagesStrategy, table: pa.Table, read: _Read) -> dict[int, BadRow]:
    """The ``BadRow`` of each row not kept, from ``turns`` on that row as Python (as
    ``datasets`` gives it: messages stored as JSON texts decoded)."""
    import json

    bad: dict[int, BadRow] = {}
    skipped = np.flatnonzero(~read.keep)
    if not len(skipped):
        return bad
    for i, row in zip(skipped.tolist(), table.take(pa.array(skipped)).to_pylist()):
        if read.json and row[read.column] is not None:
            row[read.column] = [None if m is None else json.loads(m) for m in row[read.column]]
        try:
            strategy.turns(row)
        except BadRow as exc:
            bad[i] = exc
            continue
        raise ArrowMismatch(f"row {i} of the batch: the Arrow read skips it, but turns() accepts it")
    return bad


# -- 3 and 4: tokenise and lay out ---------------------------------------------------------
def _layout(strategy: MessagesStrategy, read: _Read, bad: dict[int, BadRow]) -> FlatSamples:
    keep, counts, inserted = read.keep, read.counts, read.inserted
    n = len(keep)
    roles = list(strategy.names)
    parent = np.repeat(np.arange(n), counts)
    kept = np.flatnonzero(keep[parent])  # the messages of kept rows, in order
    ins_rows = np.flatnonzero(inserted)

    # where each output message goes: per kept row, its system message (if inserted), then its list
    per_row = np.where(keep, counts, 0) + inserted
    row_at = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    list_at = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    rows_of = parent[kept]
    slot = row_at[rows_of] + inserted[rows_of] + (kept - list_at[rows_of])
    first = row_at[ins_rows]
    total = int(row_at[-1])

    # every message as one string, "Label: content" + end of turn, in one buffer
    data, starts = _rendered(strategy, read, ins_rows)
    label_bytes = np.array([len(strategy.label_texts[r].encode("utf-8")) for r in roles], dtype=np.int64)
    end_bytes = len(strategy.turn_end_text.encode("utf-8"))
    content_bytes = _numpy(pc.fill_null(pc.binary_length(read.text), 0)).astype(np.int64)
    role = np.empty(total, dtype=np.int64)
    at = np.empty(total, dtype=np.int64)  # where the message's string begins in data
    size = np.empty(total, dtype=np.int64)  # its content's bytes
    train = np.empty(total, dtype=bool)
    role[slot], at[slot], size[slot], train[slot] = read.role[kept], starts[kept], content_bytes[kept], \
        read.train[kept]
    if len(ins_rows):
        system_bytes = _numpy(pc.binary_length(read.system.take(pa.array(ins_rows)))).astype(np.int64)
        role[first], at[first], size[first] = roles.index("system"), starts[len(read.text):], system_bytes
        train[first] = "system" in strategy.trained

    # three spans a message: the label (never learned), " " + content, the end of turn
    label = label_bytes[role]
    piece_start = np.stack([at, at + label, at + label + 1 + size], axis=1).ravel()
    piece_size = np.stack([label, np.where(size > 0, size + 1, 0), np.full(total, end_bytes)], axis=1).ravel()
    learn = np.stack([np.zeros(total, bool), train, train & strategy.learn_end], axis=1).ravel()
    spoken = np.flatnonzero(piece_size > 0)  # an empty content is no piece, as in the per-row path
    ids, piece_tokens = _encode_spans(strategy.tokenizer, data, piece_start[spoken], piece_size[spoken])
    tokens = np.zeros(len(piece_size), dtype=np.int64)
    tokens[spoken] = piece_tokens
    piece_at = np.concatenate([[0], np.cumsum(tokens)]).astype(np.int64)
    mask = np.repeat(learn.astype(np.int8), tokens)
    return FlatSamples(ids, piece_at[3 * row_at], mask, bad)


def _rendered(strategy: MessagesStrategy, read: _Read, ins_rows: np.ndarray) -> tuple[Any, np.ndarray]:
    """``label + " " + content + end`` for every message (then for each inserted system
    message) in one buffer, and where each begins. Messages of skipped rows are there too
    (null or unused): taking them out would cost a copy."""
    text, kind = read.text, read.text.type
    labels = pa.array([strategy.label_texts[r] + " " for r in strategy.names], type=kind)
    role = pa.array(np.maximum(read.role, 0))  # an unknown role's row is skipped: any label will do
    end = pa.scalar(strategy.turn_end_text, type=kind)
    joined = pc.binary_join_element_wise(labels.take(role), text, end, pa.scalar("", type=kind))
    if len(ins_rows):
        system = read.system.take(pa.array(ins_rows))
        if system.type != kind:
            system = system.cast(kind)
        label = pa.scalar(strategy.label_texts["system"] + " ", type=kind)
        joined = pa.concat_arrays([joined, pc.binary_join_element_wise(label, system, end, pa.scalar("", type=kind))])
    width = np.int64 if pa.types.is_large_string(joined.type) else np.int32
    offsets, data = joined.buffers()[1], joined.buffers()[2]
    starts = np.frombuffer(offsets, dtype=width)[joined.offset: joined.offset + len(joined)].astype(np.int64)
    return (b"" if data is None else data), starts


def _encode_spans(tokenizer: Any, data: Any, starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of each span, as ``(ids int32, tokens per span int64)``, in parts of about
    ``PART_BYTES``."""
    ends = np.cumsum(sizes)
    cuts = np.searchsorted(ends, np.arange(PART_BYTES, int(ends[-1]) if len(ends) else 0, PART_BYTES))
    bounds = [0, *np.unique(cuts).tolist(), len(sizes)]
    ids, counts = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            part_ids, offsets = tokenizer.encode_spans(data, starts[lo:hi], sizes[lo:hi])
            ids.append(np.asarray(part_ids, dtype=np.int32))
            counts.append(np.diff(np.asarray(offsets, dtype=np.int64)))
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(ids), np.concatenate(counts)
