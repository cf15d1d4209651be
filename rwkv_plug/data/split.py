"""Row selection: dataset_offset/length, the test split, sorting and reversing."""

from __future__ import annotations

import math

import numpy as np

from rwkv_plug.core.errors import DataError

#: Fixed seed of the test-split shuffle, as in the reference, so builds repeat.
SPLIT_SEED = 42


def offset_length(n: int, offset: float, length: float) -> tuple[int, int]:
    """Rows ``[start, stop)`` kept by ``dataset_offset``/``dataset_length`` (fraction if in (0,1))."""
    if offset <= 0:
        start = 0
    elif offset < 1:
        start = math.floor(n * offset)
    else:
        start = int(offset)
    start = min(start, n)
    if length <= 0:
        count = n - start
    elif length < 1:
        count = math.floor(n * length)
    else:
        count = int(length)
    return start, min(n, start + count)


def test_count(n: int, test_split: float) -> int:
    """Test rows for ``test_split``: ceil(f*n) for a fraction, k for a count, 1 for <=0."""
    if test_split <= 0:
        return 1
    if test_split < 1:
        return math.ceil(test_split * n)
    return int(test_split)


def split_train_test(ds, test_split: float, shuffle: bool, why_few: str = ""):
    """Take the test rows off ``ds``: the last rows, or a seeded random choice.

    ``why_few`` (such as "3 of 5 source rows were skipped") is added to the
    error when too few samples are left to split.
    """
    train, test = split_rows(len(ds), test_split, shuffle, why_few)
    return ds.select(train), ds.select(test)


def split_rows(n: int, test_split: float, shuffle: bool, why_few: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The rows (indices) of the train and the test split that :func:`split_train_test` cuts
    from ``n`` rows."""
    k = test_count(n, test_split)
    if k >= n:
        raise DataError(_too_few(n, k, test_split, why_few))
    order = np.random.default_rng(SPLIT_SEED).permutation(n) if shuffle else np.arange(n)
    return order[: n - k], order[n - k:]


def _too_few(n: int, k: int, test_split: float, why_few: str) -> str:
    have = f"{n} sample is" if n == 1 else f"{n} samples are"
    why = f" ({why_few})" if why_few else ""
    if n < 2:  # one for the test split and one to train on is the least there can be
        fix = ", or fix the rows that were skipped" if why_few else ""
        return (f"only {have} left to split into train and test{why}; at least 2 are needed, one for "
                f"each split: add data{fix}")
    return (f"data.test_split={test_split!r} takes {k} test samples, but only {have} left{why}, so none "
            f"would be left to train on; set data.test_split to {n - 1} or fewer rows (or a smaller "
            "fraction), or add data")


def sample_lengths(ds, batch_rows: int = 10_000) -> np.ndarray:
    """Token count of every row, read batch by batch (respects a select())."""
    import pyarrow.compute as pc

    parts = [pc.list_value_length(t.column("input_ids")).to_numpy(zero_copy_only=False)
             for t in ds.with_format("arrow").iter(batch_size=batch_rows)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def sort_by_length(ds, ascending: bool):
    """Stable sort of ``ds`` by sample length."""
    lengths = sample_lengths(ds)
    order = np.argsort(lengths if ascending else -lengths, kind="stable")
    return ds.select(order)


def reverse(ds):
    return ds.select(np.arange(len(ds) - 1, -1, -1))
