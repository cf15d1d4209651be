"""Local source files read straight into memory, without ``datasets.load_dataset``.

``load_dataset`` parses the files and then writes them to an Arrow cache
before the build can start; for a fast tokenizer that write (and the
builder's bookkeeping) costs as much as tokenising. :func:`read_direct`
parses the same files the same way as ``datasets``' packaged builders
(same parser, same batches, same options) into an in-memory table.

It gives exactly what ``load_dataset`` gives or it gives nothing: whenever
``datasets`` would do something beyond a plain parse (user reader options,
a JSON array or BOM, nested objects, mixed types that it JSON-encodes,
batches whose inferred types differ, a parse error, an empty table), it
returns None and the caller uses ``load_dataset``, with its behaviour and
error messages. ``tests/data/test_data_direct.py`` compares the two. One
exception: a JSON column that holds text in one file of a split and other
values in another is refused with the file and line, because
``load_dataset`` would silently turn those values into text.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import DataError

#: Sources above this many bytes go through load_dataset, whose memory-mapped
#: cache keeps memory bounded; below it the in-memory table is the faster path
#: (the same bound as the rechunker's in-memory chunks).
DIRECT_LIMIT = 256 << 20
#: datasets' defaults for the json and text builders (bytes per parsed batch).
JSON_CHUNK = 10 << 20
#: the only params resolve_source sets itself; any other is a reader option
_OWN_PARAMS = {"data_files", "sample_by", "data_dir"}


class _Fallback(Exception):
    """This source needs load_dataset's full behaviour."""


class _Mixed(_Fallback):
    """A JSON column holds more than one kind of value (datasets JSON-encodes it)."""


def read_direct(src: Any, limit: int | None = None) -> dict[str, Any] | None:
    """``{split: Dataset}`` (in ``data_files`` order) for a plain local source, else None.

    ``limit`` (default :data:`DIRECT_LIMIT`, read at call time) caps the source's bytes.
    Each split's rows per file go to ``src.row_counts``, so a row can be traced
    to its file. A JSON column that holds text in some rows and other values
    in others, across the files of one split, is a ``DataError`` naming the
    file and line: ``load_dataset`` would silently turn those values into text.
    """
    split_files = direct_files(src, limit)
    if split_files is None:
        return None
    try:
        per_file = {split: [list(file_tables(src.builder, f, files)) for f in files]
                    for split, files in split_files.items()}
        return assemble(src, split_files, per_file)
    except _Fallback:
        return None
    except DataError:
        raise
    except Exception:  # noqa: BLE001 - load_dataset re-reads and reports it its own way
        return None


def direct_files(src: Any, limit: int | None = None) -> dict[str, list[Path]] | None:
    """``{split: [file, ...]}`` when ``src`` is a plain local source the direct reader
    takes (under ``limit`` bytes), else None."""
    limit = DIRECT_LIMIT if limit is None else limit
    params = src.params
    data_files = params.get("data_files")
    if src.kind not in ("file", "folder") or not isinstance(data_files, dict) \
            or set(params) - _OWN_PARAMS or src.builder not in _READERS \
            or (src.builder == "text" and params.get("sample_by") != "document"):
        return None
    try:
        split_files = {s: [Path(f) for f in _as_list(files)] for s, files in data_files.items()}
        if sum(f.stat().st_size for files in split_files.values() for f in files) > limit:
            return None
    except OSError:
        return None
    return split_files


def _as_list(files: Any) -> list[str]:
    return [files] if isinstance(files, (str, Path)) else list(files)


def assemble(src: Any, split_files: dict[str, list[Path]], per_file: dict[str, list[list]]) -> dict[str, Any]:
    """``read_direct``'s result from the parsed batches of each file of each split
    (``per_file[split][i]``: the tables of ``split_files[split][i]``); sets
    ``src.row_counts``. Raises ``_Fallback`` where ``load_dataset`` must read the source."""
    import datasets
    from datasets.table import InMemoryTable, table_cast

    from rwkv_plug.data.store import digest

    builder = src.builder
    counts = {split: [sum(t.num_rows for t in ts) for ts in parts] for split, parts in per_file.items()}
    tables = {split: [t for ts in parts for t in ts] for split, parts in per_file.items()}
    if builder == "json":
        _check_text_clash(split_files, tables)
    first = next(iter(tables.values()))
    if not first:
        raise _Fallback
    if builder == "parquet":
        import pyarrow.parquet as pq

        # datasets takes the features from the first file's stored schema
        features = datasets.Features.from_arrow_schema(pq.read_schema(split_files[next(iter(split_files))][0]))
    else:
        # the first batch's types hold for the whole source in datasets (later
        # batches are cast to them); ask for equal types instead of casting
        schema = first[0].schema
        if any(not t.schema.equals(schema, check_metadata=False) for ts in tables.values() for t in ts):
            raise _Fallback
        features = datasets.Features.from_arrow_schema(schema)
    if builder == "json":
        _check_json_features(features)
    out = {}
    for split, parts in tables.items():
        table = table_cast(_concat(parts), features.arrow_schema)
        if table.num_rows == 0 or table.num_columns == 0:
            raise _Fallback
        files = split_files[split]
        # a fingerprint from the files' identity: hashing the table would cost a full pass
        fingerprint = digest(["direct", builder, split,
                              [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]])
        out[split] = datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features),
                                      split=datasets.NamedSplit(split), fingerprint=fingerprint)
    src.row_counts = counts
    return out


def _text_and_other(tables: list) -> bool:
    """Whether some column is text in one table and another (non-null) type in another."""
    import pyarrow as pa

    kinds: dict[str, set[bool]] = {}
    for table in tables:
        for f in table.schema:
            if not pa.types.is_null(f.type):
                kinds.setdefault(f.name, set()).add(pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    return any(len(k) > 1 for k in kinds.values())


def file_tables(builder: str, path: Path, split_files: list[Path], lead: int = 0) -> Iterator[Any]:
    """The parsed batches of one file of a split (whose files are ``split_files``), in order.

    ``lead`` > 0 (JSON only): the first batch comes in parts, its first ``lead`` bytes (to a
    line end), then parts of about twice the size before, so that a caller who tokenises
    each batch starts sooner and does not wait for the next part's parse (see
    ``_batch_parts``). All parts having the same column types is what the whole batch has
    (the types are the promotion of every value's); where they differ ``assemble`` refuses
    them, as a change of types between batches.
    """
    try:
        yield from (_json_tables(path, lead) if builder == "json" else _READERS[builder](path))
    except _Mixed:
        if len(split_files) > 1:
            _check_text_clash({"": split_files}, None)
        raise


def _check_text_clash(split_files: dict[str, list[Path]], tables: dict[str, list] | None) -> None:
    """Refuse a split whose files disagree on whether a column holds text (see read_direct)."""
    from rwkv_plug.data.locate import json_text_clash

    for split, files in split_files.items():
        if len(files) < 2:
            continue
        if tables is not None and not _text_and_other(tables[split]):
            continue
        clash = json_text_clash(files)
        if clash:
            raise DataError(clash)


def _concat(parts: list) -> Any:
    import pyarrow as pa

    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


# -- one reader per builder, each yielding tables as datasets' builder would ----
def _json_tables(path: Path, lead: int = 0) -> Iterator[Any]:
    """The json builder's batches: 10 MB cut at a line end, each parsed as one block
    (as datasets does) by pyarrow, or by the native reader where it gives the same
    (``_parse_json_batch``); batches are parsed on parallel threads, up to
    ``workers`` ahead of the one the caller takes (who may tokenise it meanwhile).
    ``lead``: see :func:`file_tables`.

    The file is memory-mapped and each part handed to the parser as a view of it: no
    read copies the bytes and no batch is joined from pieces (both readers copy what
    they keep, so no table refers to the mapping)."""
    import mmap
    import os
    from concurrent.futures import ThreadPoolExecutor

    from rwkv_plug.data.workers import cpu_count

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    workers = max(1, min(4, cpu_count()))
    pending: list = []
    with ThreadPoolExecutor(workers) as pool:
        start, first, handed = 0, True, lead <= 0
        while start < size:
            for i, (begin, end) in enumerate(_batch_parts(mapped.find, size, start, lead if first else 0)):
                part = view[begin:end]
                if i == 0 and (part[:1] == b"[" or (first and part[:3] == codecs.BOM_UTF8)):
                    raise _Fallback  # datasets converts a JSON array / strips the BOM first
                pending.append(pool.submit(_parse_json_batch, part))
                start = end
                # the lead part is handed on once the next is being parsed; then up to
                # ``workers`` parts wait, parsed or being parsed (bounding the bytes held)
                while len(pending) > (workers if handed else 1):
                    handed = True
                    yield pending.pop(0).result()
            first = False
        while pending:
            yield pending.pop(0).result()


def _batch_parts(find: Any, size: int, start: int, lead: int) -> Iterator[tuple[int, int]]:
    """``(begin, end)`` of each part of the batch that starts at byte ``start`` of a file
    of ``size`` bytes (``find(b"\\n", at)`` as ``bytes.find`` on its content): JSON_CHUNK
    bytes and the rest of their last line, as datasets reads it (``f.read(JSON_CHUNK) +
    f.readline()``). With ``lead`` > 0 it comes in parts that end at the first line end
    at or past ``lead``, ``3 * lead``, ``7 * lead``, ... bytes (each part about twice the
    one before) and at the batch's end."""
    def line_end(at: int) -> int:  # where f.read(at - ...) + f.readline() stops
        if at >= size:
            return size
        nl = find(b"\n", at)
        return size if nl < 0 else nl + 1

    pos, cut = start, lead
    while 0 < cut < JSON_CHUNK:
        if pos <= start + cut:  # else a long line ran past this cut
            end = line_end(start + cut)
            if end == pos:
                return
            yield pos, end
            pos = end
        cut = 2 * cut + lead
    if pos <= start + JSON_CHUNK:  # else the last part ended where the batch does
        end = line_end(start + JSON_CHUNK)
        if end > pos:
            yield pos, end


def _parse_json_batch(batch: bytes | memoryview) -> Any:
    import pyarrow as pa
    import pyarrow.json as paj

    table = _one_string_column(batch)
    if table is not None:
        return table
    base_block = max(JSON_CHUNK // 32, 16 << 10)
    block = len(batch) if len(batch) // 8 > base_block else base_block
    while True:
        try:
            table = paj.read_json(pa.BufferReader(batch), read_options=paj.ReadOptions(block_size=block))
            table.validate()
            return table
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            msg = str(exc)
            if ("straddling" in msg or "JSON conversion to" in msg) and block < len(batch):
                block *= 2  # what datasets does too
                continue
            if "changed from" in msg:
                raise _Mixed from None
            raise _Fallback from None  # bad JSON: datasets' own handling


def _one_string_column(batch: bytes | memoryview) -> Any:
    """The table pyarrow's reader gives for a batch whose every line is ``{key: string}``
    with the same one key, read in one pass by the native ``_jsonl`` reader; None for any
    other batch (or without the native module): pyarrow's reader then parses it."""
    import pyarrow as pa

    try:
        from rwkv_plug.data._jsonl import one_string_column
    except ImportError:
        return None
    got = one_string_column(batch)
    if got is None:
        return None
    key, rows, offsets, data = got
    try:
        name = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    column = pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(data))
    return pa.table({name: column})


def _flat_type(t: Any) -> bool:
    import pyarrow as pa

    while pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return not (pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_union(t)
                or pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _check_json_features(features: Any) -> None:
    """Objects inside cells may make datasets JSON-encode a field (mixed keys) or
    read the file as agent traces; only columns of values and lists of values
    are read here, for which neither can happen."""
    import pyarrow as pa

    schema = features.arrow_schema
    if not all(_flat_type(field.type) for field in schema) or any(pa.types.is_null(f.type) for f in schema):
        raise _Fallback
    try:
        from datasets.packaged_modules.json.json import has_agent_traces_markers
    except ImportError:
        return
    if has_agent_traces_markers(features):
        raise _Fallback


def _csv_tables(path: Path) -> list:
    """The csv builder's batches: pandas ``read_csv`` in chunks, with datasets' options."""
    import pandas as pd
    import pyarrow as pa
    from datasets.packaged_modules.csv.csv import CsvConfig

    reader = pd.read_csv(path, iterator=True, dtype=None, **CsvConfig().pd_read_csv_kwargs)
    with reader:
        return [pa.Table.from_pandas(df) for df in reader]


def _parquet_tables(path: Path) -> list:
    import pyarrow.parquet as pq

    return [pq.ParquetFile(path).read()]


def _text_tables(path: Path) -> list:
    """One row per file (``sample_by="document"``), read in text mode as datasets does."""
    import pyarrow as pa

    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [pa.Table.from_arrays([pa.array([text], type=pa.string())], names=["text"])]


_READERS = {"json": _json_tables, "csv": _csv_tables, "parquet": _parquet_tables, "text": _text_tables}
