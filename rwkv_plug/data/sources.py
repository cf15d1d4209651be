"""Source loading: ``data.source`` -> a ``DatasetDict`` with ``train`` (and maybe ``test``).

A source is one of: a builder name (``text``/``json``/``csv``/``parquet``)
with ``source_data_dir``; a local file or folder (relative
paths resolve against the current directory); or an HF hub dataset name.
``.txt`` files are read one row per file (``sample_by="document"``) so blank
lines and paragraph breaks survive, unlike the reference's line rows.

Plain local files are parsed straight into memory by ``direct.read_direct``
(the same parse as ``datasets``, without its Arrow cache write); anything
else goes through ``datasets.load_dataset``. A source's identity (the cache
fingerprint) holds each file's size, mtime and a fast content hash.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import DataError, RwkvPlugError
from rwkv_plug.data.workers import main_handles_ctrl_c

BUILDERS = ("text", "json", "csv", "parquet")
_BY_SUFFIX = {
    ".txt": "text", ".text": "text",
    ".jsonl": "json", ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
#: Refused: unpickling runs whatever code the file holds (and datasets refuses them too).
PICKLE_SUFFIXES = (".pkl", ".pickle")
PICKLE_REFUSED = ("pickle files can run code when loaded; convert it to parquet, e.g. "
                  "pandas.read_pickle(...).to_parquet(...)")
#: Files up to this size get a hash of their whole content in the cache
#: fingerprint; bigger ones a hash of HASH_SAMPLES blocks spread over the file
#: (with size and mtime, which every file gets).
HASH_LIMIT = 1 << 30
HASH_BLOCK = 1 << 20
HASH_SAMPLES = 64


@dataclass
class Source:
    """Where the rows come from, resolved; ``identity()`` feeds the cache fingerprint."""

    kind: str  # "builder", "file", "folder" or "hub"
    builder: str | None  # packaged builder for local data
    location: str  # resolved path, or the hub name
    files: list[Path] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    #: text documents: rechunked automatically when text_rechunk_auto is on
    is_text: bool = False
    #: rows of each file, per source split, when the direct reader read them
    #: (lets a row number be traced to its file; see data/locate.py)
    row_counts: dict[str, list[int]] = field(default_factory=dict)

    def identity(self, hash_limit: int = HASH_LIMIT) -> dict[str, Any]:
        ident: dict[str, Any] = {"kind": self.kind, "builder": self.builder,
                                 "location": self.location, "params": _jsonable(self.params)}
        if self.kind == "hub":
            ident["revision"] = self.params.get("revision") or _hub_sha(self.location)
        ident["files"] = [_file_identity(p, hash_limit) for p in self.files]
        return ident


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _file_identity(path: Path, hash_limit: int) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, **file_fingerprint(path, hash_limit)}


def file_fingerprint(path: str | Path, hash_limit: int = HASH_LIMIT) -> dict[str, Any]:
    """A file's size and content hash: of all of it up to ``hash_limit`` bytes (or 64 MB), else of
    64 evenly spaced 1 MB samples (``<algo>_sampled``). Two files with equal fingerprints hold, for
    any practical purpose, the same bytes; the path and times are not part of it."""
    path = Path(path)
    size = path.stat().st_size
    algo, new_hash = _hasher()
    if size <= max(hash_limit, HASH_BLOCK * HASH_SAMPLES):  # samples would cover it all
        return {"size": size, algo: _content_hash(path, new_hash())}
    # too big to read on every run: evenly spaced samples of the content
    return {"size": size, f"{algo}_sampled": _sampled_hash(path, size, new_hash())}


def _hasher() -> tuple[str, Any]:
    """A fast non-cryptographic hash (about 10x sha256 here; it only has to
    notice edits, and size and mtime are recorded too). xxhash comes with datasets."""
    try:
        import xxhash

        return "xxh3_128", xxhash.xxh3_128
    except ImportError:  # pragma: no cover - datasets depends on xxhash
        return "sha256", hashlib.sha256


def _content_hash(path: Path, h: Any) -> str:
    buf = memoryview(bytearray(HASH_BLOCK))  # reused: no allocation per block
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
    return h.hexdigest()


def _sampled_hash(path: Path, size: int, h: Any) -> str:
    """Hash of ``HASH_SAMPLES`` blocks spread over the file, first and last included."""
    step = (size - HASH_BLOCK) / (HASH_SAMPLES - 1)
    with open(path, "rb", buffering=0) as f:
        for i in range(HASH_SAMPLES):
            f.seek(int(i * step))
            h.update(f.read(HASH_BLOCK))
    return h.hexdigest()


def _hub_sha(name: str) -> str | None:
    """The hub commit of an unpinned dataset, or None when offline (then the name is the key)."""
    try:
        from huggingface_hub import HfApi, constants

        if constants.HF_HUB_OFFLINE:
            return None
        return HfApi().dataset_info(name, timeout=10).sha
    except Exception:  # offline, unreachable, unknown or gated: the name alone is then the key
        return None


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def missing_local_source(source: str) -> str | None:
    """Why ``source`` is a local path that does not exist, or None (it exists, or names a
    builder or a hub dataset). Cheap: one stat, so config validation can ask it."""
    if source in BUILDERS or Path(source).expanduser().exists():
        return None
    if source.startswith((".", "/", "~")) or Path(source).suffix.lower() in _BY_SUFFIX:
        return f"data.source '{source}' does not exist (looked in {Path.cwd()})"
    return None


def resolve_source(cfg: Mapping[str, Any]) -> Source:
    """Work out what ``data.source`` names (``cfg``: the ``data:`` section, or some of its keys),
    without reading any rows yet."""
    from rwkv_plug.data.options import as_data_config  # it imports this module

    cfg = as_data_config(cfg)
    source: str = cfg.source
    params = dict(cfg.source_dataset_params or {})
    if source in BUILDERS:
        data_dir = cfg.source_data_dir
        files: list[Path] = []
        if data_dir:
            d = Path(data_dir).expanduser().resolve()
            if not d.is_dir():
                raise DataError(f"data.source_data_dir '{data_dir}' is not a folder")
            files = _data_files(d)
            if not files:
                raise DataError(f"data.source_data_dir '{d}' holds no files")
            params["data_dir"] = str(d)
        if source == "text":
            params.setdefault("sample_by", "document")
        return Source("builder", source, str(params.get("data_dir", "")), files, params,
                      is_text=source == "text")
    path = Path(source).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            builder = _builder_for(path)
            if builder == "text":
                params.setdefault("sample_by", "document")
            params.setdefault("data_files", {"train": str(path)})
            return Source("file", builder, str(path), [path], params, is_text=builder == "text")
        files = _data_files(path)
        kinds = {_BY_SUFFIX.get(p.suffix.lower()) for p in files} - {None}
        if not kinds:
            pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
            if pickles:
                raise DataError(f"data.source folder '{path}' holds {pickles[0].name}: {PICKLE_REFUSED}")
            raise DataError(f"data.source folder '{path}' holds no data files; use files ending in "
                            f"{_accepted()}")
        if len(kinds) > 1:
            raise DataError(f"data.source folder '{path}' mixes file kinds ({', '.join(sorted(kinds))}); "
                            "keep one kind per folder")
        builder = kinds.pop()
        files = [p for p in files if _BY_SUFFIX.get(p.suffix.lower()) == builder]
        if builder == "text":
            params.setdefault("sample_by", "document")
        # only files of the chosen kind, so a README next to the data is not read
        params.setdefault("data_files", split_files(path, files))
        return Source("folder", builder, str(path), files, params, is_text=builder == "text")
    missing = missing_local_source(source)
    if missing:
        raise DataError(missing)
    return Source("hub", None, source, [], params)


_SPLIT_WORDS = {"test": ("test", "testing", "eval", "evaluation"),
                "validation": ("validation", "valid", "val", "dev")}


def split_files(folder: Path, files: list[Path]) -> dict[str, list[str]]:
    """Files by split, named as HF does: a path word test/eval -> test, validation/dev -> ..."""
    out: dict[str, list[str]] = {}
    for f in files:
        words = set(re.split(r"[-_. /\\]", str(f.relative_to(folder)).lower()))
        split = next((name for name, keys in _SPLIT_WORDS.items() if words & set(keys)), "train")
        out.setdefault(split, []).append(str(f))
    if "train" not in out:
        raise DataError(f"data.source folder '{folder}' has no train files (all are named as "
                        f"{'/'.join(out)} files)")
    return out


def _accepted() -> str:
    return ", ".join(sorted(_BY_SUFFIX))


def _builder_for(path: Path) -> str:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise DataError(f"data.source '{path}': {PICKLE_REFUSED}")
    builder = _BY_SUFFIX.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"data.source '{path}': unknown file type '{path.suffix}'; use one of {_accepted()}")
    return builder


def load_source(src: Source, cfg: Mapping[str, Any], cache_dir: str | None, num_proc: int | None = None):
    """Load rows as a DatasetDict holding ``train`` and, if the source has one, ``test``."""
    import datasets

    from rwkv_plug.data.direct import read_direct

    for f in src.files:
        if f.stat().st_size == 0:
            raise DataError(f"source file '{f}' is empty")
    # plain local files: parsed straight into memory, as load_dataset would parse them
    direct = read_direct(src)
    if direct is not None:
        return _pick_splits(datasets.DatasetDict(direct), src, cfg)
    kwargs = dict(src.params)
    try:
        if src.kind == "hub":
            with main_handles_ctrl_c():
                dd = datasets.load_dataset(src.location, num_proc=num_proc, **kwargs)
        else:
            with _datasets_logger_quiet():
                dd = datasets.load_dataset(src.builder, cache_dir=cache_dir, **kwargs)
    except RwkvPlugError:
        raise
    except Exception as exc:
        raise DataError(_load_error(src, exc)) from exc
    if not isinstance(dd, datasets.DatasetDict):
        dd = datasets.DatasetDict({"train": dd})
    return _pick_splits(dd, src, cfg)


def _pick_splits(dd, src: Source, cfg: Mapping[str, Any]):
    import datasets

    from rwkv_plug.data.options import as_data_config

    want = as_data_config(cfg).source_dataset_split or "train"
    if want not in dd:
        raise DataError(f"data.source_dataset_split '{want}' is not a split of '{src.location}'; "
                        f"it has: {', '.join(dd.keys())}")
    out = datasets.DatasetDict({"train": dd[want]})
    if "test" in dd and want != "test":
        out["test"] = dd["test"]
    for name, ds in out.items():
        if len(ds) == 0:
            raise DataError(f"the {name} split of source '{src.location}' has no rows")
    return out, [k for k in dd.keys() if k not in (want, "test")]


@contextmanager
def _datasets_logger_quiet():
    """datasets logs a file's parse error before raising it; we report it once, ourselves."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _cause(exc: BaseException) -> BaseException:
    """The exception under datasets' wrappers (DatasetGenerationError says only "an error occurred")."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _load_error(src: Source, exc: Exception) -> str:
    cause = _first_line(_cause(exc))
    if src.kind == "hub":
        return (f"could not load dataset '{src.location}' from the HF hub ({cause}). The hub may be "
                "unreachable or offline (HF_HUB_OFFLINE), or the name is wrong: check data.source, or "
                "download the data and point data.source at the local file or folder")
    if src.builder == "json":
        from rwkv_plug.data.locate import json_problem, json_text_clash

        # only on this error path: find the line by reading the files again, line by line
        try:
            found = next((p for p in map(json_problem, src.files) if p), None)
            if found is None and len(src.files) > 1:
                found = json_text_clash(src.files)
        except OSError:
            found = None
        if found:
            return f"{found}; fix or remove that line"
    where = ", ".join(str(f) for f in src.files[:3]) or src.location
    if "corresponds to no data" in cause:  # datasets' words for a split with no rows
        files = "file holds" if len(src.files) == 1 else "files hold"
        return (f"source {where}: the {files} no rows (only blank lines, or only a header); "
                "add data or point data.source at another file")
    return (f"could not read source {where} with the '{src.builder}' reader ({cause}); check that the "
            "file is valid and that each column holds one type of value")
