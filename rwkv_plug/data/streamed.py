"""Parsing and tokenising at once: a plain JSON Lines source tokenised as it is parsed.

The direct reader (data/direct.py) parses a JSON Lines file in 10 MB batches
on a few threads. Waiting for the whole file before tokenising leaves the
tokenizer idle for the parse; here each parsed batch is tokenised (in this
process, see data/in_process.py) while the next batches are still being
parsed, and the kept samples go straight to the rechunker or the encoded
file as before.

The result is the one the ordinary order (parse everything, then tokenise)
gives, or nothing: the parsed batches are checked exactly as
``direct.read_direct`` checks them, and whenever that check (or anything
before it) says the source needs another reader, or a strategy or encoding
error comes up that the ordinary order might not meet, the streamed work is
dropped and the build starts over the ordinary way, which then decides what
happens. Only a plain source takes this path: JSON Lines files of a ``train``
split only, no ``dataset_offset``/``dataset_length``, and a strategy and
tokenizer that tokenise in this process on Arrow batches (``text`` with
``world``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from rwkv_plug.core.errors import DataError, RwkvPlugError


#: False sends every source the ordinary way (bench/bench_preload.py compares the two).
ENABLED = True
#: Bytes of the source parsed on their own first (see ``direct.file_tables``): parsing
#: them takes a tenth of a full batch's time; the rest of that batch follows in parts
#: of about twice the size before, each parsed (faster than it is tokenised) while the
#: tokenizer is busy with the one before.
LEAD_BYTES = 1 << 20
#: Source bytes per tokenised batch (no floor on its rows): half the in-process
#: default, because the batch tokenised last is rechunked and written after
#: tokenising ends, with nothing left to overlap it (smaller batches cost more
#: per byte than they save there).
BATCH_BYTES = 4 << 20
MIN_BATCH_ROWS = 1


class _Gone(Exception):
    """The streamed build is dropped; the ordinary one runs instead."""


def build_streamed(b: Any, src: Any, log: Callable[[str], None]) -> tuple[list[str], dict] | None:
    """``(source columns, {"train": encoded split})`` for ``b`` (the pipeline's ``_Build``,
    whose summary and strategy it fills in), or None when this path does not apply or
    gives up; the caller then builds the ordinary way with a fresh ``_Build``."""
    from rwkv_plug.data import direct

    cfg = b.cfg
    split_files = direct.direct_files(src) if ENABLED else None
    if (split_files is None or src.builder != "json" or list(split_files) != ["train"]
            or (cfg.source_dataset_split or "train") != "train"
            or cfg.dataset_offset > 0 or cfg.dataset_length > 0
            or any(f.stat().st_size == 0 for f in src.files)):
        return None
    files = split_files["train"]
    per_file: list[list] = [[] for _ in files]
    batches = _tables(files, per_file)
    try:
        return _encode(b, src, batches, split_files, per_file, log)
    except _Gone:
        return None
    finally:
        batches.close()  # stops the parser threads when this path gave up early


def _tables(files: list, per_file: list[list]) -> Iterator[Any]:
    """The parsed batches of ``files`` in order, each also kept in ``per_file[i]``."""
    from rwkv_plug.data import direct

    for i, path in enumerate(files):
        # the first 2 MB of the first file come alone: tokenising starts once they are parsed
        for table in direct.file_tables("json", path, files, LEAD_BYTES if i == 0 else 0):
            per_file[i].append(table)
            yield table


def _encode(b: Any, src: Any, batches: Iterator[Any], split_files: dict, per_file: list[list],
            log: Callable[[str], None]) -> tuple[list[str], dict]:
    from rwkv_plug.data import in_place
    from rwkv_plug.data import pipeline as pl
    from rwkv_plug.data.encode import Encoder, StrategyFailed
    from rwkv_plug.data.in_process import ChunkOutput, FileOutput, encode_tables
    from rwkv_plug.data.strategy_select import pick_strategy

    first = _first(batches)
    columns = list(first.column_names)
    try:
        strategy = pick_strategy(columns, b.cfg, b.cfg.strategy)
        rechunk = pl._rechunk_plan(b.cfg, src, b.tokenizer, b.summary)
        fn = Encoder(strategy, b.cfg, b.tokenizer, 0, rechunking=rechunk is not None, threads=b.nproc)
    except RwkvPlugError:
        raise _Gone from None  # the ordinary build finds and reports it, or another reader's columns
    if not (fn.arrow and (pl.in_process(fn, fn.tokenizer) or b.nproc <= 1)):
        raise _Gone
    output = (FileOutput("train", b.work) if rechunk is None
              else ChunkOutput("train", b.cfg, b.work, rechunk, in_place.hold(b.cfg, "train", True)))
    rows = _row_reader(first)
    try:
        status = encode_tables("train", _chain(first, batches), fn, output, rows, BATCH_BYTES, MIN_BATCH_ROWS)
    except _Gone:
        raise
    except Exception as exc:  # encode_tables aborted the output
        for _ in _chain(first, batches):  # the whole source decides whether this build stands
            pass
        _checked(src, split_files, per_file)  # _Gone where read_direct would give None
        if isinstance(exc, StrategyFailed):  # as the ordinary build reports it
            where = pl._locator(src, b.cfg)("train", exc.row)
            raise DataError(f"{where + ': ' if where else ''}train {exc}") from None
        raise
    try:
        ds = _checked(src, split_files, per_file)["train"]
    except BaseException:
        output.abort()
        raise
    # from here on this is the build: the source is read as read_direct reads it
    b.strategy, b.rechunk, b.summary.strategy = strategy, rechunk, strategy.name
    b.locate = pl._locator(src, b.cfg)
    log(f"strategy '{strategy.name}' for columns {', '.join(columns)}")
    b.summary.rows_in["train"] = len(ds)
    try:
        pl._account("train", status, b.cfg, b.summary, b.locate)
    except BaseException:
        output.abort()
        raise
    return columns, {"train": output.finish() if rechunk is None else pl._chunks(b, "train", output.finish())}


def _first(batches: Iterator[Any]) -> Any:
    """The first parsed batch; _Gone when there is none or the parse needs another reader."""
    from rwkv_plug.data import direct

    try:
        return next(batches)
    except (StopIteration, direct._Fallback, RwkvPlugError):
        raise _Gone from None
    except Exception:  # noqa: BLE001 - the ordinary build re-reads and reports it its own way
        raise _Gone from None


def _chain(first: Any, batches: Iterator[Any]) -> Iterator[Any]:
    """``first`` then the rest; a parse that needs another reader ends in _Gone."""
    from rwkv_plug.data import direct

    yield first
    try:
        yield from batches
    except (direct._Fallback, RwkvPlugError):
        raise _Gone from None
    except Exception:  # noqa: BLE001 - as in _first
        raise _Gone from None


def _checked(src: Any, split_files: dict, per_file: list[list]) -> dict[str, Any]:
    """``read_direct``'s datasets from the parsed batches, or _Gone where it gives None."""
    from rwkv_plug.data import direct

    try:
        return direct.assemble(src, split_files, {"train": per_file})
    except Exception:  # noqa: BLE001 - _Fallback, a DataError, anything: the ordinary build decides
        raise _Gone from None


def _row_reader(first: Any) -> Callable[[Any], dict]:
    """A batch's rows as ``datasets`` formats them (the first batch's types hold for
    all, as ``_checked`` makes sure), for a strategy that declines Arrow batches."""
    import datasets
    from datasets.table import InMemoryTable

    info = datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(first.schema))
    return lambda table: datasets.Dataset(InMemoryTable(table), info=info)[:]
