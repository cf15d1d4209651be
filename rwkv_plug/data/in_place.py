"""The train split saved in place: the rechunker's file becomes the saved split.

Without this, the rechunked chunks are held (or written to a work file) until the
build ends, and ``save_to_disk`` then writes them again into ``data_path``: a copy
of every token, after tokenising, that nothing overlaps. Here, when the train split
will be the first rows of the rechunked ones in order (the test split cut from the
end, nothing sorted, shuffled or reversed), the rechunker writes each batch of chunks
to its file as soon as they are cut, keeping back only the last ones the test split
will take (:func:`hold`), and :func:`save_splits` moves that file into the saved
folder instead of copying it, writing the same JSON files as ``save_to_disk``. The
chunks kept back are written to a file of their own when tokenising ends, and that
file becomes the saved test split the same way.

Whether the file really is the split is checked at the end (its row count), and any
doubt gives the ordinary save: the saved dataset is the same either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ``save_to_disk``'s file name for the only shard of a split.
SHARD = "data-00000-of-00001.arrow"


def keeps_order(cfg: Any) -> bool:
    """Whether the saved train split is the first rows of the rechunked ones, in order."""
    return not (cfg.test_split_shuffle or cfg.sort_by_length or cfg.reverse_train_dataset_before_save)


def hold(cfg: Any, name: str, cut_test: bool) -> Callable[[int], int] | None:
    """For the rechunker of split ``name``: how many of the last chunks (of ``n`` so far)
    to keep out of its file, those a test split cut from the end will take
    (``cut_test``); None where its file cannot be the saved split."""
    from rwkv_plug.data.split import test_count

    if name != "train" or not keeps_order(cfg):
        return None
    if not cut_test:
        return lambda n: 0
    test_split = cfg.test_split
    return lambda n: test_count(n, test_split)


def moves(cfg: Any, files: dict[str, tuple[str | None, int, str | None, int]], train: Any,
          test: Any) -> dict[str, str]:
    """``{"train": file}`` when the arranged ``train`` split is all the rows of the
    rechunker's file (``files["train"]``: its path and rows, then the path and rows of
    the file of the chunks it kept back, or None) and only those; with ``"test": rest``
    too when ``test`` is all the rows of that second file (the rechunker keeps back only
    the chunks a test split cut from the end takes, so the two are then the same)."""
    file, rows, rest, rest_rows = files.get("train", (None, 0, None, 0))
    if file is None or not keeps_order(cfg) or len(train) != rows:
        return {}
    if rest is not None and len(test) == rest_rows:
        return {"train": file, "test": rest}
    return {"train": file}


def save_splits(dd: Any, folder: Path, files: dict[str, str] | None = None) -> None:
    """``dd.save_to_disk(folder)``, the same files, except that a split whose rows are all
    the rows of the finished Arrow file ``files[split]`` gets that file moved into place
    rather than copied. The caller vouches that the split's rows are that file's, in
    order; the row count is checked here, and any doubt (or a split that needs more
    than one shard, or a file that cannot be moved) gives the ordinary save."""
    from datasets import config

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / config.DATASETDICT_JSON_FILENAME, "w", encoding="utf-8") as f:
        json.dump({"splits": list(dd)}, f)  # as DatasetDict.save_to_disk writes it
    for name, ds in dd.items():
        source = (files or {}).get(name)
        try:
            if source is not None and _moves_whole(ds, Path(source)):
                _save_moved(ds, Path(source), folder / name)
                continue
        except OSError:  # a file system that refuses the move: copy instead
            pass
        ds.save_to_disk(str(folder / name))


def _moves_whole(ds: Any, source: Path) -> bool:
    """Whether ``Dataset.save_to_disk`` would write ``ds`` as one shard (under
    ``datasets.config.MAX_SHARD_SIZE``) and ``source`` holds exactly ``len(ds)`` rows."""
    import pyarrow as pa
    from datasets import config
    from datasets.utils.py_utils import convert_file_size_to_int

    if ds._indices is not None or ds.list_indexes() or len(ds) == 0 \
            or ds._estimate_nbytes() >= convert_file_size_to_int(config.MAX_SHARD_SIZE):
        return False
    try:
        with pa.memory_map(str(source)) as mm:
            rows = sum(batch.num_rows for batch in pa.ipc.open_stream(mm))
    except (OSError, pa.ArrowInvalid):
        return False
    return rows == len(ds)


def _save_moved(ds: Any, source: Path, dest: Path) -> None:
    """``ds.save_to_disk(dest)`` for a ``ds`` of one shard whose rows are ``source``'s:
    the file is moved, the two JSON files are written as ``save_to_disk`` writes them."""
    from datasets import config
    from datasets.utils.py_utils import asdict

    dest.mkdir(parents=True, exist_ok=True)
    state = {key: ds.__dict__[key] for key in
             ("_fingerprint", "_format_columns", "_format_kwargs", "_format_type", "_output_all_columns")}
    state["_split"] = str(ds.split) if ds.split is not None else ds.split
    state["_data_files"] = [{"filename": SHARD}]
    info = asdict(ds._info)
    os.replace(source, dest / SHARD)  # an open memory map of it stays valid
    with open(dest / config.DATASET_STATE_JSON_FILENAME, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    with open(dest / config.DATASET_INFO_FILENAME, "w", encoding="utf-8") as f:
        json.dump({key: info[key] for key in sorted(info)}, f, indent=2)
