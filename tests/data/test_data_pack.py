"""Packing short train samples: caps, separators or aligned record starts, masks, order, and the build."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest

from rwkv_plug.data.pack import RECORD_STARTS, SEPARATOR, assign, pack


def test_records_join_the_first_open_sample_with_room_under_its_cap():
    # chunk 8, min 4: caps are 8 up to 8 tokens, 24 for 20; a record joins when fill + 1 + L < cap
    bins = assign(np.array([3, 3, 1, 6, 2, 20, 3]), chunk=8, min_ctx=4)
    # 3 opens 0; 3 joins 0 (7); 1 opens 1 (0 would reach 9); 6 opens 2; 2 joins 1 (4);
    # 20 opens 3 (cap 24); 3 fits nowhere (3 would reach 24, not < 24) and opens 4
    assert bins.tolist() == [0, 0, 1, 2, 1, 3, 4]


def test_first_fit_follows_the_strict_cap_rule():
    # chunk 8: [3] + sep + [3] = 7 < 8 joins; a further +1+0 would be 8, not < 8
    assert assign(np.array([3, 3]), chunk=8, min_ctx=1).tolist() == [0, 0]
    assert assign(np.array([3, 4]), chunk=8, min_ctx=1).tolist() == [0, 1]  # 3+1+4 = 8 is not < 8
    assert assign(np.array([20, 1]), chunk=8, min_ctx=1).tolist() == [0, 0]  # cap 24 for a 20-token record
    assert assign(np.array([9, 5, 9]), chunk=8, min_ctx=1, window=1).tolist() == [0, 0, 1]  # cap 16


def test_only_the_window_of_recent_samples_is_searched():
    lengths = np.array([5, 5, 5, 1])  # chunk 8: each 5 opens a sample; 1 fits in any (5+1+1 < 8)
    assert assign(lengths, chunk=8, min_ctx=1, window=3).tolist() == [0, 1, 2, 0]
    assert assign(lengths, chunk=8, min_ctx=1, window=2).tolist() == [0, 1, 2, 1]  # sample 0 was closed


def _dataset(rows):
    import datasets

    return datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "loss_mask": [r[1] for r in rows]})


def test_packed_samples_hold_every_record_once_with_learned_separators():
    rows = [([11, 12, 13], [0, 1, 1]), ([21, 22], [1, 1]), ([31, 32, 33, 34, 35, 36, 37, 38, 39], [1] * 9),
            ([41, 42], [0, 1])]
    result = pack(_dataset(rows), chunk=8, min_ctx=1, in_sequence=True, state="carry")
    got = result.dataset.with_format("arrow")[:]
    ids = got.column("input_ids").to_pylist()
    masks = got.column("loss_mask").to_pylist()
    assert (result.records, result.samples) == (4, 2)
    assert ids == [[11, 12, 13, SEPARATOR, 21, 22], [31, 32, 33, 34, 35, 36, 37, 38, 39, SEPARATOR, 41, 42]]
    assert masks == [[0, 1, 1, 1, 1, 1], [1] * 9 + [1, 0, 1]]


def test_without_in_sequence_the_records_are_shuffled_first_and_the_same_every_time():
    rows = [([i, i + 1], [1, 1]) for i in range(1, 200, 2)]
    a = pack(_dataset(rows), chunk=16, min_ctx=1, in_sequence=False, state="carry").dataset["input_ids"]
    b = pack(_dataset(rows), chunk=16, min_ctx=1, in_sequence=False, state="carry").dataset["input_ids"]
    in_order = pack(_dataset(rows), chunk=16, min_ctx=1, in_sequence=True, state="carry").dataset["input_ids"]
    assert a == b and a != in_order
    assert sorted(t for s in a for t in s if t != SEPARATOR) == sorted(t for s in in_order for t in s if t != SEPARATOR)


@pytest.mark.slow
@pytest.mark.usefixtures("offline_data")
def test_the_build_packs_the_train_split_only_and_says_so(tmp_path):
    from rwkv_plug.data.pipeline import prepare_dataset

    rows = [{"prompt": f"question {i}?", "completion": f" answer {i}."} for i in range(40)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines: list[str] = []
    cfg = {"source": str(tmp_path / "qa.jsonl"), "data_path": str(tmp_path / "out"), "test_split": 4,
           "packing_enable": True, "packing_chunksize": 64, "packing_in_sequence": True, "packing_state": "carry"}
    dd, _ = prepare_dataset(cfg, log=lines.append)
    assert len(dd["test"]) == 4  # the test split is never packed
    assert len(dd["train"]) < 36 and any("packing: 36 train samples packed into" in line for line in lines)
    lengths = pc.list_value_length(dd["train"].with_format("arrow")[:].column("input_ids")).to_numpy()
    assert lengths.max() < 64
    plain, _ = prepare_dataset({**cfg, "data_path": str(tmp_path / "plain"), "packing_enable": False},
                               log=lambda m: None)
    packed_tokens = [t for ids in dd["train"]["input_ids"] for t in ids]
    seps = len(packed_tokens) - sum(len(ids) for ids in plain["train"]["input_ids"])
    assert seps == 36 - len(dd["train"])  # one separator between two records of a sample


def test_reset_layout_aligns_each_record_and_fits_it_under_the_cap():
    # align 4, chunk 8: 3 -> [0, 3); 3 joins at 4 (ends 7); 2 would end at 10 > 8: opens 1; 5 would
    # end at 13 in 0 and 9 in 1: opens 2; 1 would end at 9 in 0, joins 1 at 4 (ends 5)
    bins = assign(np.array([3, 3, 2, 5, 1]), chunk=8, min_ctx=1, align=4)
    assert bins.tolist() == [0, 0, 1, 2, 1]
    assert assign(np.array([4, 4]), chunk=8, min_ctx=1, align=4).tolist() == [0, 0]  # 4 + 4 = cap: fits


def test_reset_packed_samples_pad_to_the_grid_and_record_their_starts():
    rows = [([11, 12, 13], [1, 1, 1]), ([21, 22], [1, 1]), ([31, 32, 33, 34, 35], [0, 1, 1, 1, 1]),
            ([41], [1])]
    # chunk 12: 3 @0; 2 @4 (ends 6); 5 would end at 13 > 12: opens sample 1; 1 joins sample 0 @8
    result = pack(_dataset(rows), chunk=12, min_ctx=1, in_sequence=True, state="reset", align=4)
    got = result.dataset.with_format("arrow")[:]
    assert (result.records, result.samples) == (4, 2)
    assert got.column("input_ids").to_pylist() == [[11, 12, 13, 0, 21, 22, 0, 0, 41],
                                                   [31, 32, 33, 34, 35]]
    # no separator; padding is masked, and so is each record's first token (never a target alone)
    assert got.column("loss_mask").to_pylist() == [[0, 1, 1, 0, 0, 1, 0, 0, 0], [0, 1, 1, 1, 1]]
    assert got.column(RECORD_STARTS).to_pylist() == [[0, 4, 8], [0]]


@pytest.mark.usefixtures("offline_data")
def test_the_build_packs_with_resets_by_default_and_keeps_the_record_starts(tmp_path):
    from rwkv_plug.data.pipeline import prepare_dataset

    rows = [{"prompt": f"question {i}?", "completion": f" answer {i}."} for i in range(40)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines: list[str] = []
    cfg = {"source": str(tmp_path / "qa.jsonl"), "data_path": str(tmp_path / "out"), "test_split": 4,
           "packing_enable": True, "packing_chunksize": 64, "packing_align": 16}
    dd, _ = prepare_dataset(cfg, log=lines.append)  # saved and loaded back
    assert any("(packing_state: reset)" in line for line in lines)
    assert RECORD_STARTS not in dd["test"].column_names  # the test split is never packed
    starts = dd["train"][RECORD_STARTS]
    assert sum(len(s) for s in starts) == 36 and all(s % 16 == 0 for row in starts for s in row)
    assert all(len(ids) <= 64 for ids in dd["train"]["input_ids"])
