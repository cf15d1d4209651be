"""The dataset build, in order: source -> strategy -> filters -> rechunk -> split -> save.

:func:`prepare_dataset` is what ``preload``, ``inspect`` and ``fit`` call. It
reuses ``data_path`` when its fingerprint matches and otherwise rebuilds,
logging which it did and why.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_plug.core.config import Problems
from rwkv_plug.core.errors import DataError
from rwkv_plug.data import split as splitting
from rwkv_plug.data import in_place, store, tempdirs
from rwkv_plug.data.encode import StrategyFailed
from rwkv_plug.data.locate import RowLocator, no_locator
from rwkv_plug.data.options import DATA_OPTIONS, DataConfig, data_config, resolve_data_config
from rwkv_plug.data.rechunk import RechunkResult
from rwkv_plug.data.sources import Source, load_source, resolve_source
from rwkv_plug.data.summary import Summary, chunk_stats, finish_summary
from rwkv_plug.data.workers import cpu_count, main_handles_ctrl_c

Log = Callable[[str], None]
#: Below this much source data (Arrow bytes) one process is faster than a pool.
SMALL_BYTES = 1 << 20
MAP_BATCH_ROWS = 256


def _resolved(data_cfg: Mapping[str, Any]) -> DataConfig:
    """The validated, typed section: ``data_cfg`` itself when it is one, else checked first."""
    if isinstance(data_cfg, DataConfig):
        return data_cfg
    problems = Problems("data")
    cfg = resolve_data_config(data_cfg, problems)
    problems.raise_if_any()
    return data_config(cfg)


def load_summary(data_path: str | Path) -> Summary | None:
    """The summary stored with a built dataset, or None."""
    meta = store.read_meta(Path(data_path).expanduser().resolve())
    return Summary.from_json(meta["summary"]) if meta and meta.get("summary") else None


def prepare_dataset(data_cfg: Mapping[str, Any], *, force: bool = False, log: Log = print, load: bool = True):
    """Build ``data_path`` if missing or stale (or ``force``), else reuse it.

    Returns ``(DatasetDict with train and test, "built" | "reused")``; both
    splits have columns ``input_ids`` (int32 lists) and ``loss_mask`` (int8).
    With ``load=False`` (``preload``: the dataset on disk is all it wants) the
    DatasetDict is not opened and None stands in its place.
    """
    import datasets

    from rwkv_plug import __version__
    from rwkv_plug.core import plugins
    from rwkv_plug.data.tokenizer import load_tokenizer

    opened = datasets.load_from_disk if load else (lambda _path: None)
    cfg = _resolved(data_cfg)
    data_path = Path(cfg.data_path).expanduser().resolve()
    if cfg.skip_datapath_setup and not force:
        return _as_it_is(data_path, log), "reused"
    tokenizer = load_tokenizer(cfg.tokenizer, cfg)
    src = resolve_source(cfg)
    # the source's identity hashes every byte of a local file: a build that need not
    # compare it first (forced, or nothing built there yet) starts while it is hashed
    hashing = ThreadPoolExecutor(1, thread_name_prefix="rwkv-plug-source-hash")
    identity = hashing.submit(src.identity)
    hashing.shutdown(wait=False)  # the hash still runs; the thread ends with it

    def base() -> dict[str, Any]:
        return {
            "source": identity.result(),
            "tokenizer": {"spec": cfg.tokenizer, "fingerprint": tokenizer.fingerprint(),
                          "vocab_size": tokenizer.vocab_size,
                          "plugin": store.plugin_version(plugins.tokenizers(), tokenizer.name)},
            "rwkv_plug": __version__,
        }

    for left in tempdirs.sweep(data_path):
        log(f"removed {left}, left behind by a build that was killed")
    # the strategy this config picks for the columns of the dataset there (if any) decides
    # which strategy's options count; the build records the one it used
    reason = "--force was given" if force else store.stale_reason(
        data_path, lambda: _parts(base(), cfg, tokenizer, _strategy_for(store.read_meta(data_path), cfg)))
    if reason is None:
        log(f"reusing the dataset at {data_path} (its fingerprint matches the config, source and tokenizer)")
        return opened(str(data_path)), "reused"
    store.check_replaceable(data_path)
    log(f"building the dataset at {data_path}: {reason}")
    staged = store.build_dir(data_path)
    work = store.build_dir(data_path, kind="work")  # intermediate files, removed below
    old = None
    try:
        dd, summary, strategy, columns, moves = _build(cfg, src, tokenizer, work, log)
        parts = _parts(base(), cfg, tokenizer, strategy)
        late = set(dd) - set(summary.splits)  # rechunked splits' statistics came with the chunks
        with ThreadPoolExecutor(1) as pool:  # the others' and the id check run while the save writes
            checked = pool.submit(finish_summary, dd, summary, tokenizer.vocab_size) if late else None
            if not late:
                finish_summary(dd, summary, tokenizer.vocab_size)  # only the id check is left
            in_place.save_splits(dd, staged, moves)  # dd.save_to_disk, a file written already moved
            if checked is not None:
                checked.result()  # a bad id raises here, before anything is published
        entry = store.plugin_version(plugins.strategies(), summary.strategy)
        store.write_meta(staged, {"meta_version": store.META_VERSION, "parts": parts,
                                  "fingerprint": store.digest(parts), "strategy": entry,
                                  "columns": columns, "summary": summary.to_json()})
        del dd  # release the work files before publishing
        old = store.publish(staged, data_path, remove_old=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staged, ignore_errors=True)
    # the replaced dataset is deleted while the new one is opened; both finish before returning
    remover = None
    if old is not None:
        remover = threading.Thread(target=shutil.rmtree, args=(old, True), name="rwkv-plug-remove-old")
        remover.start()
    try:
        for line in summary.lines():
            log(line)
        return opened(str(data_path)), "built"
    finally:
        if remover is not None:
            remover.join()


def _parts(base: dict[str, Any], cfg: DataConfig, tokenizer, strategy: type | None) -> dict[str, Any]:
    """The fingerprinted parts: ``base`` (source, tokenizer, version) plus the strategy (name,
    plugin and version) and the config keys of the pipeline, the tokenizer and that strategy."""
    from rwkv_plug.core import plugins

    config = store.content_config(cfg, (o.name for o in DATA_OPTIONS), (type(tokenizer), strategy))
    entry = store.plugin_version(plugins.strategies(), strategy.name) if strategy else None
    return store.roundtrip({**base, "config": config, "strategy": entry})


def _strategy_for(meta: dict[str, Any] | None, cfg: DataConfig) -> type | None:
    """The strategy ``cfg`` picks for the source columns recorded in ``meta``; None when
    there is no record, or no strategy fits them (the build then says why)."""
    from rwkv_plug.core.errors import RwkvPlugError
    from rwkv_plug.data.strategy_select import pick_strategy

    columns = (meta or {}).get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        return None
    try:
        return pick_strategy(columns, cfg, cfg.strategy)
    except RwkvPlugError:
        return None


@dataclass
class _Build:
    """What every step of one build shares."""

    cfg: DataConfig
    tokenizer: Any
    work: Path  # folder for intermediate files
    nproc: int
    summary: Summary
    locate: Callable[[str, int], str] = no_locator  # a row's file:line, or ""
    strategy: type | None = None
    rechunk: tuple[int, list[int]] | None = None  # (text_rechunk_size, separator ids) when rechunking
    cut_test: bool = True  # the test split is cut from train (the source has none)
    # a split's rechunk file and its rows, then the file of the chunks kept back and its rows
    files: dict[str, tuple[str | None, int, str | None, int]] = field(default_factory=dict)
    # (data/in_place.py: the files are moved into data_path, not copied)


def _as_it_is(data_path: Path, log: Log):
    """``data_path`` loaded without a freshness check (``data.skip_datapath_setup``)."""
    import datasets

    if not (data_path / "dataset_dict.json").is_file():
        raise DataError(f"data.skip_datapath_setup is true but {data_path} holds no built dataset; build it "
                        "with `rwkv-plug preload`, or remove the key")
    log(f"using the dataset at {data_path} as it is (data.skip_datapath_setup: no check against the config)")
    return datasets.load_from_disk(str(data_path))


def _build(cfg: DataConfig, src: Source, tokenizer, work: Path, log: Log):
    import datasets

    from rwkv_plug.data.strategy_select import pick_strategy

    from rwkv_plug.data.streamed import build_streamed

    nproc = cfg.num_proc or cpu_count()
    summary = f"{cfg.tokenizer} (vocab {tokenizer.vocab_size})"
    # a plain JSON Lines source is tokenised while it is parsed, where that gives the same build
    b = _Build(cfg, tokenizer, work, nproc, Summary(tokenizer=summary))
    streamed = build_streamed(b, src, log)
    if streamed is not None:
        columns, encoded = streamed
        train, test = _arrange(b, encoded)
        return (datasets.DatasetDict({"train": train, "test": test}), b.summary, b.strategy, columns,
                in_place.moves(cfg, b.files, train, test))
    dd, ignored = load_source(src, cfg, cache_dir=str(work / "hf"), num_proc=nproc)
    b = _Build(cfg, tokenizer, work, nproc, Summary(tokenizer=summary), _locator(src, cfg))
    if ignored:
        b.summary.notes.append(f"source splits not used: {', '.join(ignored)}")
    row_offset = _select_rows(dd, cfg, b.summary)
    columns = list(dd["train"].column_names)
    b.strategy = pick_strategy(columns, cfg, cfg.strategy)
    b.summary.strategy = b.strategy.name
    log(f"strategy '{b.strategy.name}' for columns {', '.join(dd['train'].column_names)}")
    b.rechunk = _rechunk_plan(cfg, src, tokenizer, b.summary)
    b.cut_test = "test" not in dd
    encoded = {}
    for name, ds in dd.items():
        b.summary.rows_in[name] = len(ds)
        try:
            encoded[name] = _encode_split(b, name, ds, row_offset if name == "train" else 0)
        except StrategyFailed as exc:
            where = b.locate(name, exc.row)
            raise DataError(f"{where + ': ' if where else ''}{name} {exc}") from None
    train, test = _arrange(b, encoded)
    return (datasets.DatasetDict({"train": train, "test": test}), b.summary, b.strategy, columns,
            in_place.moves(cfg, b.files, train, test))


def _select_rows(dd, cfg: DataConfig, summary: Summary) -> int:
    """Apply ``dataset_offset``/``dataset_length`` to the train split; its first source row."""
    if cfg.dataset_offset <= 0 and cfg.dataset_length <= 0:
        return 0
    n = len(dd["train"])
    start, stop = splitting.offset_length(n, cfg.dataset_offset, cfg.dataset_length)
    if stop <= start:
        raise DataError(f"data.dataset_offset/dataset_length select no rows of the {n} source rows")
    dd["train"] = dd["train"].select(range(start, stop))
    summary.notes.append(f"dataset_offset/length: source train rows {start}..{stop - 1} of {n}")
    return start


def _rechunk_plan(cfg: DataConfig, src: Source, tokenizer, summary: Summary) -> tuple[int, list[int]] | None:
    """``(chunk size, separator ids)`` when the documents are rechunked, else None."""
    size = cfg.text_rechunk_size
    if not (size > 0 and (cfg.text_rechunk_force or (cfg.text_rechunk_auto and src.is_text))):
        return None
    summary.rechunk_size = size
    sep_text = cfg.text_rechunk_separator
    return size, (tokenizer.encode(sep_text) if sep_text else [])


def _packed(b: _Build, train):
    """The train split packed (see data/pack.py); rechunked samples are left as they are."""
    from rwkv_plug.data.pack import pack

    if b.rechunk is not None:
        b.summary.notes.append("packing_enable: not applied, the samples are rechunked to one size")
        return train
    cfg = b.cfg
    chunk, state = cfg.packing_chunksize, cfg.packing_state
    result = pack(train, chunk, cfg.packing_min_ctx_len if cfg.packing_min_ctx_len > 0 else chunk,
                  cfg.packing_in_sequence, state, cfg.packing_align)
    b.summary.notes.append(f"packing: {result.records} train samples packed into {result.samples} "
                           f"(packing_state: {state})")
    return result.dataset


def _chunks(b: _Build, name: str, res: RechunkResult) -> RechunkResult:
    """A split's ``RechunkResult``, checked, its remainder noted in the summary."""
    size = b.rechunk[0]
    b.summary.rechunk_remainder[name] = res.remainder
    if res.chunks == 0:
        raise DataError(f"the {name} split has fewer than text_rechunk_size={size} tokens "
                        f"({res.remainder}); lower data.text_rechunk_size or add data")
    if res.file is not None:
        b.files[name] = (res.file, res.file_rows, res.rest_file, res.chunks - res.file_rows)
    return res


def _arrange(b: _Build, encoded: dict):
    """``(train, test)``: the source's test split or one cut from train, then train packed,
    sorted or reversed. ``encoded``: each split's Dataset, or its RechunkResult."""
    cfg, summary = b.cfg, b.summary
    done = {k: v for k, v in encoded.items() if isinstance(v, RechunkResult)}
    if "test" in encoded:
        summary.notes.append("the source has a test split; data.test_split is not used")
        train, test = (done[k].dataset if k in done else encoded[k] for k in ("train", "test"))
        picks = {"train": ("train", None), "test": ("test", None)}  # (source split, its rows)
    else:
        res = done.get("train")
        rows = splitting.split_rows(res.chunks if res else len(encoded["train"]), cfg.test_split,
                                    cfg.test_split_shuffle, summary.why_few())
        if (res is not None and res.rest_file is not None and not cfg.test_split_shuffle
                and len(rows[1]) == res.chunks - res.file_rows):
            train, test = res.parts()  # the rows the selects take, each split's own file already
        else:
            train, test = ((res.dataset if res is not None else encoded["train"]).select(r) for r in rows)
        picks = {"train": ("train", rows[0]), "test": ("train", rows[1])}
    for name, (source, picked) in picks.items():  # the set of rows stays as it is from here on
        if source in done:  # rechunked: the statistics came with the chunks
            summary.splits[name] = chunk_stats(b.rechunk[0], done[source], picked)
    if cfg.packing_enable:
        train = _packed(b, train)
    if cfg.sort_by_length:
        train = splitting.sort_by_length(train, cfg.sort_asc)
    if cfg.reverse_train_dataset_before_save:
        train = splitting.reverse(train)
    return train, test


def _encode_split(b: _Build, name: str, ds, row_offset: int):
    """The split's kept samples as a Dataset, or rechunked (its RechunkResult) when ``b.rechunk`` is set."""
    from rwkv_plug.data.encode import Encoder, encoded_features

    # num_proc threads for a tokenizer that runs its own (world) in this process ...
    fn = Encoder(b.strategy, b.cfg, b.tokenizer, row_offset, rechunking=b.rechunk is not None, threads=b.nproc)
    if in_process(fn, fn.tokenizer) or ds.data.nbytes < SMALL_BYTES or min(b.nproc, len(ds)) <= 1:
        from rwkv_plug.data.in_process import ChunkOutput, FileOutput, encode_in_process

        # kept samples go straight to the rechunker, or to a file
        output = (FileOutput(name, b.work) if b.rechunk is None
                  else ChunkOutput(name, b.cfg, b.work, b.rechunk, in_place.hold(b.cfg, name, b.cut_test)))
        table = encode_in_process(name, ds, fn, output)
        try:
            _account(name, table, b.cfg, b.summary, b.locate)
        except BaseException:
            output.abort()
            raise
        return output.finish() if b.rechunk is None else _chunks(b, name, output.finish())
    procs = max(1, min(b.nproc, len(ds)))
    fn.threads = 1  # ... or num_proc processes of one thread each
    batch = max(1, min(MAP_BATCH_ROWS, -(-len(ds) // procs)))
    with main_handles_ctrl_c():
        enc = ds.map(fn, batched=True, batch_size=batch, with_indices=True,
                     remove_columns=ds.column_names, features=encoded_features(),
                     num_proc=procs, cache_file_name=str(b.work / f"encoded-{name}.arrow"),
                     load_from_cache_file=False,
                     new_fingerprint=store.digest([name, repr(b.work), b.strategy.name]),
                     desc=f"tokenising {name}")
    table = enc.select_columns(["_drop", "_row", "_bad"]).with_format("arrow")[:]
    keep = _account(name, table, b.cfg, b.summary, b.locate)
    kept = enc.select(keep).remove_columns(["_drop", "_bad", "_row"])
    if b.rechunk is None:
        return kept
    from rwkv_plug.data.rechunk import rechunk

    size, sep = b.rechunk
    return _chunks(b, name, rechunk(kept, size, sep, b.cfg.data_prefix_skip_mask,
                                    str(b.work / f"rechunk-{name}.arrow")))


def _account(name: str, table, cfg: DataConfig, summary: Summary,
             locate: Callable[[str, int], str] = no_locator) -> np.ndarray:
    """Count the dropped rows per reason (raising under ``strict``); the kept row numbers.

    ``locate(split, row)`` gives a row's ``file:line`` (or "") for the messages.
    """
    drop = table.column("_drop").to_numpy(zero_copy_only=False)
    rows = table.column("_row").to_numpy(zero_copy_only=False)
    bad = table.column("_bad").to_numpy(zero_copy_only=False)
    if cfg.strict and bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = locate(name, int(rows[i]))
        at = f"{where}: " if where else ""
        raise DataError(f"{at}{name} row {rows[i]} (0-based): {drop[i]} [data.strict is on; turn it "
                        "off to skip bad rows and count them instead]")
    dropped = drop != ""
    for reason in dict.fromkeys(drop[dropped]):
        where = np.flatnonzero(drop == reason)
        row = int(rows[where[0]])
        summary.skip(str(reason), len(where), row, name, locate(name, row))
    keep = np.flatnonzero(~dropped)
    if len(keep) == 0:
        reasons = "; ".join(f"{k}: {v.count}" for k, v in summary.skipped.items())
        raise DataError(f"no rows of the {name} split are left after tokenising and filtering "
                        f"({reasons})")
    summary.documents_kept[name] = len(keep)
    return keep


def _locator(src: Source, cfg: DataConfig) -> Callable[[str, int], str]:
    """``file:line`` of a row of the train or test split, where the source allows it."""
    files = src.params.get("data_files")
    if src.kind not in ("file", "folder") or not isinstance(files, dict):
        return no_locator
    files = {k: [v] if isinstance(v, str) else list(v) for k, v in files.items()}
    return RowLocator(src.builder, files, src.row_counts,
                      {"train": cfg.source_dataset_split or "train", "test": "test"})


def in_process(encoder, tokenizer) -> bool:
    """Whether tokenising runs in this process whatever ``num_proc`` says.

    A strategy with the flat fast path and a tokenizer that runs its own
    threads (``Tokenizer.threads``, the built-in world tokenizer) already keep
    every core busy with next to no Python work per token; worker processes
    would only add start-up, pickling and shard-merge costs.
    """
    return bool(encoder.flat and (tokenizer.threads or 1) > 1)
