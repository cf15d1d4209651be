"""``data_path`` on disk: the metadata fingerprint, freshness checks and atomic saves.

The metadata file records everything that determines the dataset's content,
so a later run can say exactly why it rebuilds ("tokenizer changed") or
that it reuses the folder. Of the ``data:`` keys that is the pipeline's own
and the options of the strategy and tokenizer in use, not those of every
registered plugin: installing or removing an unrelated plugin keeps the
dataset. Saves go to a temp folder next to ``data_path``
and are renamed into place, so a crash never leaves a half-written dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rwkv_plug.core.atomic import atomic_write
from rwkv_plug.core.errors import DataError
from rwkv_plug.data import tempdirs

META_FILE = "rwkv_plug_dataset.json"
#: 2: the config part holds only the keys of the strategy and tokenizer in use.
META_VERSION = 2
#: Config keys that do not change the built rows, so they stay out of the fingerprint.
NOT_CONTENT = ("data_path", "num_proc", "strict", "dataloader_shuffle_training", "dataloader_prefetch_factor",
               "dataloader_pin_memory", "dataloader_swap_train_test_split", "skip_datapath_setup",
               "processing_max_batch_size")


def plugin_version(registry, name: str) -> dict[str, Any]:
    """Which plugin (distribution and version) provides ``name`` in ``registry``."""
    from rwkv_plug.core import plugins

    if name not in registry:
        return {"name": name, "plugin": None, "version": None}
    entry = registry.entry(name)
    info = plugins.current().info.get(entry.plugin)
    return {"name": name, "plugin": entry.plugin,
            "distribution": info.distribution if info else None,
            "version": info.version if info else None}


def content_config(cfg: dict[str, Any], own_keys: Iterable[str], plugin_classes: Iterable[type | None]) -> dict[str, Any]:
    """The keys of ``cfg`` that determine the built rows: ``own_keys`` (the pipeline's) and
    the options that ``plugin_classes`` (the strategy and tokenizer in use) declare,
    less :data:`NOT_CONTENT`."""
    keys = set(own_keys)
    for cls in plugin_classes:
        keys.update(o.name for o in (getattr(cls, "options", ()) or ()))
    return {k: cfg.get(k) for k in sorted(keys) if k not in NOT_CONTENT}


def digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON, so fresh and stored parts compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=repr))


class BadMeta(ValueError):
    """``rwkv_plug_dataset.json`` exists but is not a record this package wrote."""


def _check_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise BadMeta(f"expected a JSON object, found {type(meta).__name__}")
    for key in ("parts", "summary", "strategy"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], dict):
            raise BadMeta(f"'{key}' must be an object, found {type(meta[key]).__name__}")
    parts = meta.get("parts") or {}
    for key in ("tokenizer", "source", "config"):
        if key in parts and parts[key] is not None and not isinstance(parts[key], dict):
            raise BadMeta(f"'parts.{key}' must be an object, found {type(parts[key]).__name__}")
    files = (parts.get("source") or {}).get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, dict) and "path" in f for f in files):
        raise BadMeta("'parts.source.files' must be a list of objects with a 'path'")
    if meta.get("summary") is not None:
        from rwkv_plug.data.summary import Summary

        try:
            Summary.from_json(meta["summary"]).lines()
        except Exception as exc:  # any field of the wrong name or type
            raise BadMeta(f"'summary' is invalid ({type(exc).__name__}: {exc})") from None


def load_meta(data_path: Path) -> dict[str, Any] | None:
    """The record in ``data_path``, None when there is none; raises :class:`BadMeta`
    when the file exists but cannot be read or is not shaped as we write it."""
    p = data_path / META_FILE
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadMeta(exc.strerror or str(exc)) from None
    except ValueError as exc:
        raise BadMeta(f"not valid JSON ({exc})") from None
    _check_meta(meta)
    return meta


def read_meta(data_path: Path) -> dict[str, Any] | None:
    """The record in ``data_path``, or None when it is missing or unreadable."""
    try:
        return load_meta(data_path)
    except BadMeta:
        return None


def stale_reason(data_path: Path, parts: dict[str, Any] | Callable[[], dict[str, Any]]) -> str | None:
    """Why ``data_path`` must be rebuilt, or None when it is fresh.

    ``parts["strategy"]`` is the :func:`plugin_version` entry of the strategy the
    config picks for the recorded columns (None when none fits them). ``parts`` may
    be a function giving them, called only when there is a record to compare with.
    """
    if not data_path.exists():
        return f"no dataset at {data_path} yet"
    try:
        meta = load_meta(data_path)
    except BadMeta as exc:
        return f"its {META_FILE} is unreadable: {exc}; rebuilding"
    if meta is None:
        return f"{data_path} has no {META_FILE} (built by another tool or interrupted)"
    if meta.get("meta_version") != META_VERSION:
        return f"the dataset record's format changed ({meta.get('meta_version')} -> {META_VERSION})"
    if callable(parts):
        parts = parts()
    old = meta.get("parts") or {}
    if old.get("tokenizer") != parts["tokenizer"]:
        return "tokenizer changed"
    old_source, source = old.get("source") or {}, parts["source"]
    if source.get("kind") == "hub" and None in (old_source.get("revision"), source.get("revision")):
        # a hub revision is unknown offline (or was when built): the name and params decide
        old_source = {**old_source, "revision": source.get("revision")}
    if old_source != source:
        return _source_change(old_source, source)
    old_strategy, strategy = old.get("strategy") or {}, parts.get("strategy") or {}
    if old_strategy.get("name") != strategy.get("name"):
        return (f"the strategy for its columns changed ({old_strategy.get('name')} -> "
                f"{strategy.get('name') or 'none fits'})")
    if old.get("config") != parts["config"]:
        return f"data config changed ({config_change(old.get('config') or {}, parts['config'])})"
    if old.get("rwkv_plug") != parts["rwkv_plug"]:
        return f"rwkv-plug version changed ({old.get('rwkv_plug')} -> {parts['rwkv_plug']})"
    if old_strategy != strategy:
        return f"the plugin providing strategy '{strategy.get('name')}' changed"
    return None


def config_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The keys that differ, each marked when it was added or removed (a plugin's
    option set changed), e.g. ``min_token_size, text_end_of_document (added)``."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            out.append(f"{key} (added)")
        elif key not in new:
            out.append(f"{key} (removed)")
        elif old[key] != new[key]:
            out.append(key)
    return ", ".join(out)


def _source_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    old_files = {f["path"]: f for f in old.get("files", [])}
    new_files = {f["path"]: f for f in new.get("files", [])}
    for path in sorted(set(old_files) | set(new_files)):
        if path not in old_files:
            return f"source file added ({path})"
        if path not in new_files:
            return f"source file removed ({path})"
        if old_files[path] != new_files[path]:
            o, n = old_files[path], new_files[path]
            if set(o) != set(n) and (o.get("size"), o.get("mtime_ns")) == (n.get("size"), n.get("mtime_ns")):
                return f"the fingerprint format of source files changed ({path} has the same size and time)"
            return f"source file changed ({path})"
    if old.get("revision") != new.get("revision"):
        return "source dataset revision changed"
    return "data source changed"


#: Files that ``DatasetDict.save_to_disk`` writes in each split folder (besides ``*.arrow``).
SPLIT_FILES = ("dataset_info.json", "state.json")


def _unexpected_entry(data_path: Path) -> str | None:
    """The first entry of ``data_path`` that our save does not write, or None."""
    try:
        splits = json.loads((data_path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        splits = {str(s) for s in splits}
    except (OSError, ValueError, KeyError, TypeError):
        splits = set()
    for entry in sorted(data_path.iterdir()):
        if entry.name in ("dataset_dict.json", META_FILE) and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name in splits and entry.is_dir() and not entry.is_symlink():
            for inner in sorted(entry.iterdir()):
                ok = inner.is_file() and not inner.is_symlink() and (
                    inner.name in SPLIT_FILES or inner.suffix == ".arrow")
                if not ok:
                    return f"{entry.name}/{inner.name}"
            continue
        return entry.name
    return None


def check_replaceable(data_path: Path) -> None:
    """Refuse to replace a folder that is neither empty nor exactly a dataset we built.

    Ours means it holds ``rwkv_plug_dataset.json`` and nothing but what the
    save writes (``dataset_dict.json``, the record, one folder per split with
    its ``.arrow``, ``dataset_info.json`` and ``state.json`` files), so a user
    file that found its way in is never deleted.
    """
    if not data_path.exists() and not data_path.is_symlink():
        return
    if not data_path.is_dir() or data_path.is_symlink():
        raise DataError(f"data.data_path '{data_path}' exists and is not a folder; "
                        "point data_path at a new folder")
    if not any(data_path.iterdir()):
        return
    if not (data_path / META_FILE).is_file():
        raise DataError(f"data.data_path '{data_path}' is a non-empty folder that rwkv-plug did not build "
                        f"(no {META_FILE}); refusing to replace it. Point data_path at a new folder")
    extra = _unexpected_entry(data_path)
    if extra is not None:
        raise DataError(f"data.data_path '{data_path}' holds '{extra}', which an rwkv-plug dataset does not; "
                        "refusing to replace the folder. Move that file out or point data_path at a new folder")


def build_dir(data_path: Path, kind: str = "build") -> Path:
    """A fresh temp folder next to ``data_path`` (same file system, so rename is atomic)."""
    return tempdirs.make(data_path, kind)


def publish(staged: Path, data_path: Path, *, remove_old: bool = True) -> Path | None:
    """Move the finished ``staged`` folder to ``data_path``, replacing any old one.

    The old dataset is moved aside first and deleted, or, with
    ``remove_old=False``, its temp path is returned for the caller to delete.
    """
    old = None
    if data_path.exists():
        old = tempdirs.make(data_path, "old")
        os.rmdir(old)
        os.replace(data_path, old)
    try:
        os.replace(staged, data_path)
    except OSError:
        if old is not None:
            os.replace(old, data_path)  # put the previous dataset back
        raise
    if old is not None and remove_old:
        shutil.rmtree(old, ignore_errors=True)
        return None
    return old


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    text = json.dumps(meta, indent=2, sort_keys=True, default=repr).encode("utf-8")
    atomic_write(folder / META_FILE, lambda f: f.write(text))
