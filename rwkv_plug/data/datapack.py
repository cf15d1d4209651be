"""Datapacks: several datasets, each built as its own ``data:`` section, mixed into one.

A datapack file has the earlier trainer's three sections::

    datapack:              # where the mix goes and how it mixes
      data_path: packs/mix/
      mixing_mode: shuffle # or concat (train splits in list order)
      weighting: subsample # with weights: or repeat (see weighted_mix.py)
      seed: 101            # of the shuffle and of the weighted sampling
    default:               # data: keys every dataset starts from
      tokenizer: world
      data_path: packs/parts/   # a dataset without its own data_path gets <this>/<index>/
    dataset:               # one data: section per dataset (plus an optional name)
      - source: a.jsonl
      - source: b.parquet
        name: b
        weight: 0.3        # optional, on every dataset or none: share of trained tokens

Each dataset is built or reused exactly as ``preload`` would; the mix is
rebuilt only when a part or the mixing settings changed. With weights, each
part's train rows are sampled to its share of trained tokens first
(:mod:`rwkv_plug.data.weighted_mix`); test splits are always concatenated
whole. Train with it by pointing ``data.data_path`` at
``datapack.data_path`` with ``skip_datapath_setup: true``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rwkv_plug.core.config import Problems, check_sections, load_yaml, resolve_options
from rwkv_plug.core.errors import ConfigError, DataError
from rwkv_plug.core.interfaces import Option
from rwkv_plug.core.sections import build, section_class
from rwkv_plug.data import store
from rwkv_plug.data.weighted_mix import WEIGHTINGS

MIXING_MODES = ("concat", "shuffle")
#: Seed of the shuffled mix (the earlier trainer's).
SHUFFLE_SEED = 101

#: The ``datapack:`` section's keys (docs/config.md, Datapacks).
DATAPACK_OPTIONS: tuple[Option, ...] = (
    Option("data_path", None, "Folder the mix is saved to.", type=str, shown_default="required"),
    Option("mixing_mode", "concat", "`concat`: the train splits in list order; `shuffle`: shuffled together.",
           choices=MIXING_MODES, expects="one of " + ", ".join(MIXING_MODES)),
    Option("weighting", None, "With weights: `subsample` (no row repeated) or `repeat` (no row left out).",
           type=str, choices=WEIGHTINGS, expects="one of " + ", ".join(WEIGHTINGS), shown_default="subsample"),
    Option("seed", None, "Seed of the shuffle and of the weighted sampling.", type=int, minimum=0,
           expects="a whole number, 0 or more", shown_default=str(SHUFFLE_SEED)),
)
#: The validated ``datapack:`` section.
DatapackConfig = section_class("DatapackConfig", DATAPACK_OPTIONS, __name__,
                               "The validated ``datapack:`` section of a datapack file.")
#: Keys of a dataset entry that belong to the pack, not to its data: section.
_ENTRY_KEYS = ("name", "weight")
PACK_SECTIONS = ("datapack", "default", "dataset")

Log = Callable[[str], None]


def load_pack(path: str | Path) -> tuple[DatapackConfig, list[float] | None, list[tuple[str, Any]]]:
    """``(datapack section, weights, [(name, data: section) ...])``, every problem reported at
    once; ``weights`` are the datasets' weights in order, or None when they give none."""
    from rwkv_plug.data.options import data_config, resolve_data_config

    raw = load_yaml(path)
    problems = Problems(str(path))
    check_sections(raw, PACK_SECTIONS, problems, kind="a datapack file")
    given = raw.get("datapack") or {}
    default = raw.get("default") or {}
    entries = raw.get("dataset")
    if not isinstance(given, dict) or not isinstance(default, dict):
        raise ConfigError(f"{path}: the datapack and default sections must be mappings of keys")
    values = resolve_options("datapack", given, DATAPACK_OPTIONS, problems, check_types=True)
    if not values["data_path"] and "data_path" not in values.failed:
        problems.add("datapack.data_path is required: the folder the mix is saved to")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        problems.add("dataset must be a list of data: sections (one mapping per dataset)")
        entries = []
    pack = build(DatapackConfig, {k: v for k, v in values.items() if k not in values.failed})
    weights = _check_weighting(pack, default, entries, problems)
    parts = []
    for i, entry in enumerate(entries):
        section = {k: v for k, v in {**default, **entry}.items() if k not in _ENTRY_KEYS}
        if "data_path" not in entry and default.get("data_path"):
            section["data_path"] = str(Path(default["data_path"]) / str(i))
        sub = Problems(f"dataset[{i}]")
        cfg = resolve_data_config(section, sub)
        problems.items.extend(f"dataset[{i}]: {item}" for item in sub.items)
        parts.append((str(entry.get("name") or f"dataset_{i}"), data_config(cfg)))
    problems.raise_if_any()
    return pack, weights, parts


def build_pack(path: str | Path, force: bool = False, log: Log = print):
    """Build (or reuse) every dataset of the pack, then the mix; returns ``(DatasetDict, status)``."""
    import datasets

    from rwkv_plug.data.pipeline import prepare_dataset

    pack, weights, parts = load_pack(path)
    built = []
    for name, cfg in parts:
        log(f"datapack: dataset {name}")
        dd, _ = prepare_dataset(cfg, force=force, log=log)
        built.append((name, cfg, dd, store.read_meta(Path(cfg.data_path).expanduser().resolve())))
    _check_same_tokenizer(built)
    out = Path(pack.data_path).expanduser().resolve()
    mixing = {k: v for k, v in (("weights", weights), ("weighting", pack.weighting), ("seed", pack.seed))
              if v is not None}
    recipe = store.roundtrip({"mixing_mode": pack.mixing_mode, **mixing,
                              "parts": [(name, (meta or {}).get("fingerprint")) for name, _, _, meta in built]})
    old = store.read_meta(out)
    if not force and old is not None and old.get("parts", {}).get("datapack") == recipe:
        log(f"datapack: reusing the mix at {out} (its parts and mixing settings are unchanged)")
        return datasets.load_from_disk(str(out)), "reused"
    store.check_replaceable(out)
    trains = [dd["train"] for _, _, dd, _ in built]
    report = None
    if weights is not None:
        trains, report = _weighted(built, weights, pack.weighting or "subsample", _seed(pack))
    mixed = _mix(trains, [dd["test"] for _, _, dd, _ in built], pack.mixing_mode, _seed(pack))
    _save(out, mixed, recipe, built, log, report)
    return datasets.load_from_disk(str(out)), "built"


def _check_same_tokenizer(built: list) -> None:
    seen = {}
    for name, _, _, meta in built:
        tok = ((meta or {}).get("parts") or {}).get("tokenizer") or {}
        seen[name] = (tok.get("spec"), tok.get("vocab_size"))
    if len(set(seen.values())) > 1:
        listed = "; ".join(f"{name}: {spec} ({vocab} ids)" for name, (spec, vocab) in seen.items())
        raise DataError(f"the datasets of a datapack must share one tokenizer, but {listed}; set tokenizer "
                        "in the default section")


def _seed(pack: DatapackConfig) -> int:
    return SHUFFLE_SEED if pack.seed is None else pack.seed


def _check_weighting(pack: DatapackConfig, default: dict[str, Any], entries: list,
                     problems: Problems) -> list[float] | None:
    """The datasets' weights against each other and ``datapack.weighting`` (the section's rule
    across keys; each key's own type and range its declaration checks): the weights, or None."""
    from rwkv_plug.data.weighted_mix import weight_problems

    if "weight" in default:
        problems.add("default.weight: a weight belongs to each dataset entry (its share of trained tokens), "
                     "not to the default section")
    names = [str(e.get("name") or f"dataset_{i}") for i, e in enumerate(entries)]
    raw = [e.get("weight") for e in entries]
    found = weight_problems(raw, names)
    problems.items.extend(found)
    weighted = any(w is not None for w in raw)
    if pack.weighting is not None and not weighted:
        problems.add("datapack.weighting needs a weight on every dataset (dataset[i].weight); without weights "
                     "the parts are mixed whole")
    return [float(w) for w in raw] if weighted and not found else None


def _weighted(built: list, weights: list[float], weighting: str, seed: int):
    """The parts' train splits sampled to their weights, and what each part achieved."""
    from rwkv_plug.data.weighted_mix import choose_rows, shares, trained_per_row

    names = [name for name, *_ in built]
    trained = [trained_per_row(dd["train"]) for _, _, dd, _ in built]
    empty = [n for n, w, t in zip(names, weights, trained) if w > 0 and int(t.sum()) == 0]
    if empty:
        raise DataError(f"datapack part(s) {', '.join(empty)} have a weight above 0 but no trained tokens in "
                        "their train split; give them weight 0 or fix their data")
    picked = choose_rows(trained, weights, seed, weighting)
    trains = [dd["train"].select(rows) for (_, _, dd, _), rows in zip(built, picked)]
    return trains, shares(names, weights, trained, picked)


def _mix(trains: list, tests: list, mode: str, seed: int = SHUFFLE_SEED):
    import datasets

    train = datasets.concatenate_datasets(trains)
    if mode == "shuffle":
        train = train.shuffle(seed=seed)
    test = datasets.concatenate_datasets(tests)
    return datasets.DatasetDict({"train": train, "test": test})


def _split_stats(split: str, ds, built: list):
    """The mix's statistics for ``split``: the parts' recorded ones added up (a pass over
    the mix only when a part has none on record)."""
    from rwkv_plug.data.summary import SplitStats, split_stats

    recorded = [(((meta or {}).get("summary") or {}).get("splits") or {}).get(split) for *_, meta in built]
    if not all(isinstance(r, dict) for r in recorded):
        return split_stats(ds)[0]
    parts = [SplitStats(**r) for r in recorded]
    return SplitStats(samples=sum(p.samples for p in parts), tokens=sum(p.tokens for p in parts),
                      trained_tokens=sum(p.trained_tokens for p in parts),
                      max_id=-1 if any(p.max_id < 0 < p.samples for p in parts) else max(p.max_id for p in parts))


def _save(out: Path, mixed, recipe: Any, built: list, log: Log, report: list | None = None) -> None:
    from rwkv_plug.data.summary import Summary, split_stats

    summary = Summary(strategy="datapack", tokenizer=str(((built[0][3] or {}).get("parts") or {})
                                                         .get("tokenizer", {}).get("spec")))
    for name, _, dd, _ in built:
        summary.notes.append(f"datapack part {name}: train {len(dd['train'])}, test {len(dd['test'])} samples")
    summary.notes.extend(part.line() for part in report or ())
    for split, ds in mixed.items():
        # a weighted train split is a sample of the parts: its statistics are counted, not added up
        summary.splits[split] = (split_stats(ds)[0] if report is not None and split == "train"
                                 else _split_stats(split, ds, built))
        summary.rows_in[split] = summary.documents_kept[split] = len(ds)
    staged = store.build_dir(out)
    try:
        mixed.save_to_disk(str(staged))
        first = (built[0][3] or {}).get("parts") or {}
        meta = {"meta_version": store.META_VERSION, "fingerprint": store.digest(recipe),
                "parts": {"datapack": recipe, "tokenizer": first.get("tokenizer")}, "summary": summary.to_json()}
        if report is not None:
            meta["mix_shares"] = [vars(part) for part in report]
        store.write_meta(staged, meta)
        store.publish(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    for line in summary.lines():
        log(line)
    log(f"datapack: mix saved to {out}; train on it with data_path: {out} and skip_datapath_setup: true")
