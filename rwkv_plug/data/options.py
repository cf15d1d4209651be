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

from rwkv_plug.core.config import Problems, resolve_options
from rwkv_plug.core.errors import RwkvPlugError
from rwkv_plug.core.interfaces import Option
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
    Option("data_path", None, "Folder where the built dataset is saved and reused (required).", type=str),
    Option("source", None, "HF hub dataset name, builder name (text/json/csv/parquet), "
           "or a local file or folder (required).", type=str),
    Option("source_data_dir", None, "data_dir for a builder source such as `text` or `json`.", type=str),
    Option("source_dataset_params", None, "Extra keyword arguments for HF load_dataset "
           "(name, data_files, revision, ...).", type=dict),
    Option("source_dataset_split", "train", "Split of the source used as the train split.",
           check=_not_empty),
    Option("tokenizer", "neox", "neox, world, or an HF tokenizer name or local folder.", check=_not_empty),
    Option("strategy", None, "Force a row strategy by name instead of picking one from the columns.",
           type=str),
    Option("min_token_size", -1, "Drop documents shorter than this many tokens (>0 active)."),
    Option("max_token_size", -1, "Drop documents longer than this many tokens (>0 active); "
           "never truncated."),
    Option("text_rechunk_size", 4096, "Tokens per sample after rechunking; <=0 disables rechunking."),
    Option("text_rechunk_auto", True, "Rechunk automatically for .txt files and the `text` builder."),
    Option("text_rechunk_force", False, "Rechunk any source."),
    Option("text_rechunk_separator", "\n", "Text put after every document in the rechunked stream "
           "(escapes such as '\\n' are honoured); '' for none.", escapes=True),
    Option("test_split", 0.01, "Test split size: a fraction in (0,1), a row count, or <=0 for one row. "
           "Ignored when the source has a test split.", check=_split_size),
    Option("test_split_shuffle", False, "Shuffle (with a fixed seed) before taking the test split.",
           aliases=("test_shuffle",)),
    Option("data_prefix_skip_mask", 0, "Do not learn the first N tokens of every sample "
           "(and of every rechunked chunk).", check=_at_least(0)),
    Option("sort_by_length", False, "Sort the train split by sample length."),
    Option("sort_asc", True, "Sort ascending (true) or descending (false)."),
    Option("dataset_offset", -1, "Skip this many source train rows (a fraction if in (0,1)); "
           "applied once, to the source rows before tokenising.", type=float, check=_row_range),
    Option("dataset_length", -1, "Keep this many source train rows (a fraction if in (0,1)); "
           "applied once, to the source rows before tokenising.", type=float, check=_row_range),
    Option("reverse_train_dataset_before_save", False, "Reverse the order of the train split."),
    Option("num_proc", None, "Workers for tokenising (default: CPU count): the world tokenizer's "
           "threads in one process with the text strategy, else worker processes (tiny datasets: one).",
           type=int, check=_at_least(1)),
    Option("dataloader_shuffle_training", False, "Shuffle the train split every epoch "
           "(ignored with sort_by_length); read by fit, not by the build."),
    Option("strict", False, "Fail the build on the first bad row instead of skipping it."),
    Option("skip_datapath_setup", False, "Use data_path as it is, without checking it against the config "
           "or building it (fit and inspect); preload always checks."),
    Option("processing_max_batch_size", 100000, "No effect: rechunking and packing stream whole splits; "
           "accepted for the earlier trainer's configs."),
    Option("dataloader_prefetch_factor", 0, "DataLoader worker processes, each prefetching this many batches "
           "(0: the main process collates, enough for tokenised data); read by fit.", check=_at_least(0)),
    Option("dataloader_pin_memory", True, "Pin the batches' memory when training on a CUDA device; read by fit."),
    Option("dataloader_swap_train_test_split", False, "Debug: train on the test split and validate on the "
           "train split; read by fit."),
    Option("packing_enable", False, "Pack short train samples into longer ones (not with rechunking, whose "
           "samples already have one size)."),
    Option("packing_chunksize", 4096, "Packed samples are capped at a multiple of this many tokens.",
           check=_at_least(1)),
    Option("packing_min_ctx_len", -1, "The smallest cap of a packed sample; -1 or 0 means packing_chunksize."),
    Option("packing_in_sequence", False, "Pack the train samples in their order; false shuffles them "
           "(seed 101) first."),
    Option("packing_batchsize", 20160, "No effect: the earlier trainer read it but never used it; packing "
           "needs no batch size."),
)

_DATAPACK = ("build the pack with `rwkv-plug datapack PACK.yaml`, then train with data_path set to its "
             "datapack.data_path and skip_datapath_setup: true")

#: Keys of the reference trainer that rwkv-plug rejects for now, with why.
UNSUPPORTED: dict[str, str] = {
    "datapack_config_path": _DATAPACK,
    "dataset_name": _DATAPACK,
    "dataset_index": _DATAPACK,
    "is_random_datapack": _DATAPACK,
    "data_path_storage_options": "remote storage for data_path comes later; use a local folder",
}

#: Flags of :data:`UNSUPPORTED` that do nothing when false; every other
#: unsupported key does nothing when null. At that value a key is accepted.
_NOOP_FALSE = ("is_random_datapack",)
DATA_NOOP: dict[str, Any] = {key: False if key in _NOOP_FALSE else None for key in UNSUPPORTED}


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
    options = list(DATA_OPTIONS) + plugin_options()
    declared = {o.name for o in options} | {a for o in options for a in o.aliases}
    unsupported = {k: v for k, v in UNSUPPORTED.items() if k not in declared}
    cfg = resolve_options("data", raw, options, problems, unsupported=unsupported, noop=DATA_NOOP,
                          check_types=True)
    _check_values(cfg, problems)
    return cfg


# -- value checks -----------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_values(cfg: dict, problems: Problems) -> None:
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


def _plugin_checks(what: str, cls: type, cfg: dict, problems: Problems) -> None:
    """A strategy's or tokenizer's own option rules (``check_options``), into ``problems``;
    skipped when one of its options already failed its type check (it was reported)."""
    if any(f"data.{o.name}" in problems.bad_values for o in getattr(cls, "options", ()) or ()):
        return
    try:
        found = cls.check_options(cfg)
    except Exception as exc:  # a plugin's bug: say whose, and go on with the other checks
        problems.add(f"{what}: its option check failed with {type(exc).__name__}: {exc}")
        return
    for problem in found or ():
        problems.add(str(problem))
