"""The ``data:`` section: the pipeline's own keys and their validation.

Strategy and tokenizer plugins declare their own keys (``Strategy.options``,
``Tokenizer.options``); :func:`resolve_data_config` validates the whole
section against all of them at once, so a typo anywhere gets a did-you-mean.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from rwkv_plug.core.config import Problems, Resolved, resolve_options
from rwkv_plug.core.errors import RwkvPlugError
from rwkv_plug.core.interfaces import Legacy, Option
from rwkv_plug.core.sections import build, section_class
from rwkv_plug.data.sources import BUILDERS, PICKLE_REFUSED, PICKLE_SUFFIXES


def _at_least(n: int):
    def check(value: Any) -> str | None:
        return None if value >= n else f"an integer of {n} or more"
    return check


def _split_size(value: Any) -> str | None:
    if value >= 1 and not float(value).is_integer():
        return "a fraction in (0,1), a row count, or <=0 for one row"
    return None


def _row_range(value: Any) -> str | None:
    if value >= 1 and not float(value).is_integer():
        return "a fraction in (0,1), a row count, or -1 for off"
    return None


def _not_empty(value: Any) -> str | None:
    return None if value else "a non-empty string"


DATA_OPTIONS: tuple[Option, ...] = (
    Option("data_path", None,
           "Folder the built dataset is saved to (HF `save_to_disk` layout plus `rwkv_plug_dataset.json`) and "
           "reused from.",
           type=str, shown_default="required"),
    Option("source", None,
           "An HF hub dataset name; a builder name `text`/`json`/`csv`/`parquet` (with `source_data_dir`); or a "
           "local `.txt`/`.text`/`.jsonl`/`.json`/`.csv`/`.parquet` file, or a folder of one kind of such files "
           "(other files are ignored; a file whose path has the word `test`/`eval` forms the test split, "
           "`validation`/`valid`/`val`/`dev` a validation split that is not used). A `.txt` file is one row (one "
           "document). Pickles (`.pkl`/`.pickle`, the `pandas` builder) are refused: loading one can run code; "
           "convert it to parquet, e.g. `pandas.read_pickle(...).to_parquet(...)`. In a folder of JSON files, a "
           "column that holds text in some rows and numbers (or other values) in others is an error naming the file "
           "and line (`datasets` would silently turn those values into text).",
           type=str, shown_default="required"),
    Option("source_data_dir", None,
           "`data_dir` for a builder-name source.",
           type=str),
    Option("source_dataset_params", None,
           "Extra `load_dataset` keyword arguments (`name`, `data_files`, `revision`, `sample_by` ...). `split` is "
           "not allowed: use `source_dataset_split`. `streaming: true` is not supported yet (refused; the source is "
           "downloaded and read whole, `dataset_offset`/`dataset_length` keep part of it).",
           type=dict, shown_default="`{}`"),
    Option("source_dataset_split", "train",
           "Source split used as the train split; a missing split is an error listing the splits there are.",
           check=_not_empty),
    Option("tokenizer", "neox",
           "`neox`, `world`, a registered tokenizer name, or an HF tokenizer name / local folder.",
           check=_not_empty),
    Option("strategy", None,
           "Force a strategy by name instead of picking it from the columns. If the strategy describes the columns "
           "it needs (all built-ins do) and the source lacks them, the build stops before tokenising, with what the "
           "strategy needs and the columns found.",
           type=str),
    Option("min_token_size", -1,
           "Drop documents shorter than this (>0 active), before rechunking."),
    Option("max_token_size", -1,
           "Drop documents longer than this (>0 active), before rechunking. Never truncated."),
    Option("text_rechunk_size", 4096,
           "Tokens per sample when rechunking; <=0 turns rechunking off."),
    Option("text_rechunk_auto", True,
           "Rechunk `.txt` sources (a file, a folder of them, or the `text` builder) automatically."),
    Option("text_rechunk_force", False,
           "Rechunk any source."),
    Option("text_rechunk_separator", "\n",
           "Text appended after every document in the rechunked stream (mask 1). Escapes apply; `\"<|endoftext|>\"` "
           "gives token 0 with neox and world; `''` for none.",
           escapes=True),
    Option("test_split", 0.01,
           "Fraction in (0,1) → ceil(f·N) rows; integer k → k rows; <=0 → 1 row. Ignored when the source has a "
           "`test` split.",
           type=int | float, check=_split_size),  # a row count stays an int (messages show it as written)
    Option("test_split_shuffle", False,
           "Without it the test rows are the last rows; with it a seeded (42) shuffle, the same on every build.",
           aliases=("test_shuffle",)),
    Option("data_prefix_skip_mask", 0,
           "Do not learn the first N tokens of every document (every strategy) and of every rechunked chunk.",
           check=_at_least(0)),
    Option("sort_by_length", False,
           "Sort the train split by length (after the test split is taken)."),
    Option("sort_asc", True,
           "Ascending (true) or descending (false)."),
    Option("dataset_offset", -1,
           "Skip this many source train rows (a fraction if in (0,1)). Applied **once**, to the source rows before "
           "tokenising.",
           type=int | float, check=_row_range),
    Option("dataset_length", -1,
           "Keep this many source train rows (a fraction if in (0,1)). Applied **once**, with `dataset_offset`.",
           type=int | float, check=_row_range),
    Option("reverse_train_dataset_before_save", False,
           "Reverse the order of the train split."),
    Option("num_proc", None,
           "Workers for tokenising. The built-in `world` tokenizer with the `text` or `messages` (`rwkv` "
           "layout) strategy (any strategy with the flat fast path, see plugin_hooks.md) tokenises on exactly "
           "`num_proc` threads in one process (1: one thread); other combinations use `num_proc` worker "
           "processes, where the `world` tokenizer runs one thread each. Sources under 1 MB use one process (a "
           "pool costs more than it saves), the `world` tokenizer still on `num_proc` threads. `num_proc` "
           "counts tokenising workers only: the main thread rechunks each batch while the next is tokenised, "
           "and a local JSON source is parsed on up to 4 threads (lines that are all `{\"<one key>\": "
           "\"<string>\"}` by a native one-pass reader, `rwkv_plug/data/_jsonl.c`, which gives pyarrow's "
           "result or leaves the batch to pyarrow). A JSON Lines `train` source tokenised in one "
           "process (and with no `dataset_offset`/`dataset_length`) is tokenised while it is parsed: read and "
           "parsed one 10 MB batch after another (the first batch in parts of about 1, 2, 4 MB, so "
           "tokenising starts sooner), tokenised in batches of about 4 MB, giving the same "
           "dataset as parsing first; other sources are parsed whole "
           "before tokenising starts.",
           type=int, check=_at_least(1), shown_default="CPU count"),
    Option("dataloader_shuffle_training", False,
           "Shuffle the train split every epoch (ignored with `sort_by_length`). Read by `fit`; does not change the "
           "built dataset."),
    Option("strict", False,
           "Fail the build at the first bad row (None / missing / non-text cell ...) instead of skipping and "
           "counting it."),
    Option("skip_datapath_setup", False,
           "Use `data_path` as it is: no check against the config and no build (`fit`, `inspect`; a missing dataset "
           "is an error; `source` is then optional). `preload` always checks, as in the earlier trainer. Used to "
           "train on a datapack (below)."),
    Option("processing_max_batch_size", 100000,
           "No effect: rechunking and packing stream whole splits. Accepted so the earlier trainer's configs run."),
    Option("dataloader_prefetch_factor", 0,
           "DataLoader worker processes for training and validation, each prefetching this many batches (the "
           "earlier trainer's meaning: one number for both). 0 collates in the main process, which is enough for "
           "tokenised data (the earlier trainer's default 4, and its crash on 0, are not kept). Read by `fit`.",
           check=_at_least(0)),
    Option("dataloader_pin_memory", True,
           "Pin the batches' memory, when training on a CUDA device (ignored on CPU). Read by `fit`."),
    Option("dataloader_swap_train_test_split", False,
           "Debugging aid: train on the test split and validate on the train split (`fit` says so). Read by `fit`."),
    Option("packing_enable", False,
           "Pack short train samples into longer ones, so a step trains more tokens (below). Not applied to "
           "rechunked samples, which already have one size; the test split is never packed."),
    Option("packing_chunksize", 4096,
           "A packed sample's cap is its first record's length (at least `packing_min_ctx_len`) rounded up to a "
           "multiple of this. Use a multiple of `model.ctx_len`.",
           check=_at_least(1)),
    Option("packing_min_ctx_len", -1,
           "The smallest cap; -1 or 0 means `packing_chunksize`."),
    Option("packing_state", "reset",
           "`reset`: each packed record starts from the fresh state, exactly as if trained alone (below); needs a "
           "kernel that resets (`torch`; `kernel: auto` picks one). `carry`: the earlier trainer's packing, the "
           "state carries from one record into the next after a separator token.",
           choices=("reset", "carry")),
    Option("packing_align", 32,
           "With `packing_state: reset`, each record starts at a multiple of this many tokens (masked padding "
           "between), where the kernel can reset its state: a multiple of the kernel's chunk (`torch`: 32) that "
           "divides `model.ctx_len` (`fit` refuses a `ctx_len` it does not divide).",
           check=_at_least(1)),
    Option("packing_in_sequence", False,
           "Pack the train samples in their order; false shuffles them (seed 101, the same every build) first."),
    Option("packing_batchsize", 20160,
           "No effect. The earlier trainer read it but never used it (it grouped by `packing_chunksize` instead); "
           "packing needs no batch size."),
)

_DATAPACK = ("build the pack with `rwkv-plug datapack PACK.yaml`, then train with data_path set to its "
             "datapack.data_path and skip_datapath_setup: true")

#: Keys of the reference trainer that rwkv-plug rejects for now, with why; each is accepted
#: (doing nothing) at its no-op value: false for a flag, null for the others.
DATA_LEGACY: tuple[Option, ...] = (
    Option("datapack_config_path", legacy=Legacy(_DATAPACK, noop=None)),
    Option("dataset_name", legacy=Legacy(_DATAPACK, noop=None)),
    Option("dataset_index", legacy=Legacy(_DATAPACK, noop=None)),
    Option("is_random_datapack", legacy=Legacy(_DATAPACK, noop=False)),
    Option("data_path_storage_options", legacy=Legacy("remote storage for data_path comes later; use a local folder",
                                                      noop=None)),
)


#: The validated ``data:`` section: one frozen field per key of :data:`DATA_OPTIONS`, the keys that
#: strategies and tokenizers declare in its ``plugin_options`` field (it also reads like a read-only
#: mapping of all of them, which is how the pipeline takes it).
DataConfig = section_class("DataConfig", DATA_OPTIONS, __name__,
                           "The validated ``data:`` section (docs/config.md).", extensible=True)


def data_config(values: Mapping[str, Any]) -> DataConfig:
    """The typed, frozen form of a validated ``data:`` section (:func:`resolve_data_config`'s result)."""
    return build(DataConfig, values)


def as_data_config(cfg: Mapping[str, Any]) -> DataConfig:
    """``cfg`` itself when it is a :class:`DataConfig`, else the ``DataConfig`` of its keys, the
    defaults for the rest. No checks: what a user wrote goes through :func:`resolve_data_config`
    first; this lets the pipeline's steps take a part of a section (a test, a plugin) too."""
    return cfg if isinstance(cfg, DataConfig) else data_config(cfg)


def plugin_options() -> list[Option]:
    """The ``data:`` keys declared by every registered strategy and tokenizer."""
    from rwkv_plug.core import plugins

    out: list[Option] = []
    for registry in (plugins.strategies(), plugins.tokenizers()):
        for entry in registry:
            out.extend(getattr(entry.cls, "options", ()) or ())
    return out


def resolve_data_config(raw: Mapping | None, problems: Problems) -> dict:
    """Validate the ``data:`` section and fill defaults; problems go to ``problems``.

    Checks unknown keys (did-you-mean), unsupported keys (with the reason),
    required keys, value types and ranges. The caller raises via
    ``problems.raise_if_any()`` so every problem is reported at once.
    """
    if raw is not None and not isinstance(raw, Mapping):
        problems.add(f"the data section must be a mapping of keys, got {type(raw).__name__}")
        raw = {}
    cfg = resolve_options("data", raw, [*DATA_OPTIONS, *DATA_LEGACY, *plugin_options()], problems,
                          check_types=True)
    _check_values(cfg, problems)
    return cfg


# -- value checks -----------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_values(cfg: Resolved, problems: Problems) -> None:
    """What the options' types cannot say: required keys and rules across keys."""
    for key in ("data_path",) if cfg.get("skip_datapath_setup") is True else ("data_path", "source"):
        if cfg.get(key) in (None, ""):
            problems.add(f"data.{key} is required")
    source = cfg.get("source")
    if source == "pandas":
        problems.add("data.source 'pandas' reads pickle files, which can run code when loaded; convert "
                     "them to parquet, e.g. pandas.read_pickle(...).to_parquet(...), and use source: parquet")
    elif isinstance(source, str) and PurePath(source).suffix.lower() in PICKLE_SUFFIXES:
        problems.add(f"data.source '{source}': {PICKLE_REFUSED}")
    if cfg.get("tokenizer") == "binidx":
        problems.add("data.tokenizer: binidx is not supported yet: convert the data to jsonl "
                     "with a text column, or use a tokenizer name")
    elif isinstance(cfg.get("tokenizer"), str) and cfg["tokenizer"].strip():
        from rwkv_plug.data.tokenizer import pick_tokenizer_class

        try:  # the name only: nothing is loaded until the build needs it
            tokenizer_cls = pick_tokenizer_class(cfg["tokenizer"].strip())
        except RwkvPlugError as exc:
            problems.add(f"data.tokenizer: {exc}")
        else:
            _plugin_checks(f"tokenizer '{tokenizer_cls.name}'", tokenizer_cls, cfg, problems)
    params = cfg.get("source_dataset_params")
    if params is None:
        cfg["source_dataset_params"] = {}
    elif isinstance(params, Mapping) and "split" in params:
        problems.add("data.source_dataset_params.split is not allowed: use data.source_dataset_split")
    if isinstance(params, Mapping) and params.get("streaming") not in (None, False):
        problems.add("data.source_dataset_params.streaming is not supported yet: remove it; the source is "
                     "downloaded and read whole (data.dataset_offset/dataset_length keep part of it)")
    if source in BUILDERS and not cfg.get("source_data_dir") and not (
        isinstance(params, Mapping) and params.get("data_files")
    ):
        problems.add(f"data.source '{source}' is a builder name: set data.source_data_dir "
                     "to the folder with the files (or point data.source at a file)")
    low, high = cfg.get("min_token_size"), cfg.get("max_token_size")
    if _is_int(low) and _is_int(high) and 0 < high < low:
        problems.add(f"data.max_token_size ({high}) is below data.min_token_size "
                     f"({low}): every document would be dropped")
    from rwkv_plug.core import plugins

    for entry in plugins.strategies():
        _plugin_checks(f"strategy '{entry.name}'", entry.cls, cfg, problems)
    if isinstance(cfg.get("strategy"), str):
        try:
            plugins.strategies().get(cfg["strategy"])
        except RwkvPlugError as exc:
            problems.add(f"data.strategy: {exc}")


def _plugin_checks(what: str, cls: type, cfg: Resolved, problems: Problems) -> None:
    """A strategy's or tokenizer's own option rules (``check_options``), into ``problems``;
    skipped when one of its options already failed its type check (it was reported)."""
    if any(o.name in cfg.failed for o in getattr(cls, "options", ()) or ()):
        return
    try:
        found = cls.check_options(cfg)
    except Exception as exc:  # a plugin's bug: say whose, and go on with the other checks
        problems.add(f"{what}: its option check failed with {type(exc).__name__}: {exc}")
        return
    for problem in found or ():
        problems.add(str(problem))
