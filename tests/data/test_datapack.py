"""Datapacks: datasets built one by one from a shared default, mixed, reused, and trained on."""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import run_cli
from rwkv_plug.core.errors import ConfigError, DataError
from rwkv_plug.data.datapack import build_pack

pytestmark = pytest.mark.usefixtures("offline_data")


def _write_pack(tmp_path, mode="shuffle", second_tokenizer=""):
    for name, n in (("a", 10), ("b", 6)):
        if not (tmp_path / f"{name}.jsonl").exists():
            (tmp_path / f"{name}.jsonl").write_text(
                "".join(json.dumps({"text": f"{name} row {i} with some words"}) + "\n" for i in range(n)))
    (tmp_path / "pack.yaml").write_text(textwrap.dedent(f"""
        datapack:
          data_path: {tmp_path}/mix
          mixing_mode: {mode}
        default:
          tokenizer: world
          data_path: {tmp_path}/parts
          test_split: 2
        dataset:
          - source: {tmp_path}/a.jsonl
            name: a
          - source: {tmp_path}/b.jsonl
            test_split: 1
            {second_tokenizer}
    """))
    return tmp_path / "pack.yaml"


def test_parts_are_built_from_the_default_then_mixed_and_reused(tmp_path):
    pack = _write_pack(tmp_path)
    lines: list[str] = []
    dd, status = build_pack(pack, log=lines.append)
    assert status == "built" and (len(dd["train"]), len(dd["test"])) == (8 + 5, 2 + 1)
    assert (tmp_path / "parts" / "0" / "rwkv_plug_dataset.json").is_file()  # default data_path + index
    assert any("datapack part a: train 8, test 2 samples" in line for line in lines)
    assert any("datapack part dataset_1: train 5, test 1 samples" in line for line in lines)
    concat, _ = build_pack(_write_pack(tmp_path, mode="concat"), log=lines.append)  # another mix: rebuilt
    assert sorted(concat["train"]["input_ids"]) == sorted(dd["train"]["input_ids"])
    assert concat["train"]["input_ids"] != dd["train"]["input_ids"]  # shuffle changed the order
    lines.clear()
    _, status = build_pack(_write_pack(tmp_path, mode="concat"), log=lines.append)
    assert status == "reused" and any("reusing the mix" in line for line in lines)
    assert build_pack(pack, force=True, log=lines.append)[1] == "built"


@pytest.mark.slow
def test_the_parts_must_share_a_tokenizer(tmp_path):
    pack = _write_pack(tmp_path, second_tokenizer="tokenizer: neox")
    with pytest.raises(DataError, match="must share one tokenizer, but a: world .*dataset_1: neox"):
        build_pack(pack, log=lambda m: None)


def test_mistakes_in_the_pack_file_are_reported_together(tmp_path):
    (tmp_path / "pack.yaml").write_text("datapack: {mixing_mode: zip, size: 3, seed: -1}\n"
                                        "dataset:\n  - {source: x.txt}\n")
    with pytest.raises(ConfigError) as info:
        build_pack(tmp_path / "pack.yaml", log=lambda m: None)
    msg = str(info.value)
    assert "unknown key datapack.size" in msg and "datapack.data_path is required" in msg
    assert "datapack.mixing_mode must be one of concat, shuffle, got 'zip'" in msg
    assert "datapack.seed must be a whole number, 0 or more, got -1" in msg
    assert "dataset[0]: data.data_path is required" in msg


@pytest.mark.slow
def test_fit_trains_on_a_pack_through_skip_datapath_setup(tmp_path):
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    res = run_cli("datapack", str(_write_pack(tmp_path)), cwd=tmp_path)
    assert res.returncode == 0 and "datapack built" in res.stdout, res.stderr[-2000:]
    save_state_dict(init_state_dict(1, 64, 65536, seed=0), tmp_path / "model.pth")
    (tmp_path / "fit.yaml").write_text(textwrap.dedent(f"""
        trainer: {{max_steps: 2, enable_progress_bar: false, default_root_dir: {tmp_path}/runs}}
        model: {{load_model: {tmp_path}/model.pth, ctx_len: 16, lr_init: 1e-3}}
        data: {{data_path: {tmp_path}/mix, skip_datapath_setup: true, tokenizer: world}}
    """))
    lines: list[str] = []
    run_fit(tmp_path / "fit.yaml", log=lines.append)
    assert any("as it is" in line for line in lines) and (tmp_path / "runs" / "checkpoints" / "last.ckpt").is_file()


def test_the_mix_records_the_statistics_of_its_rows(tmp_path):
    from rwkv_plug.data import store
    from rwkv_plug.data.summary import split_stats

    dd, _ = build_pack(_write_pack(tmp_path), log=lambda m: None)
    recorded = store.read_meta(tmp_path / "mix")["summary"]["splits"]
    for split in ("train", "test"):
        assert recorded[split] == split_stats(dd[split])[0].__dict__, split


# -- token-weighted mixes -------------------------------------------------------------
def _write_weighted(tmp_path, weights=(0.7, 0.3), extra="", out="mix", sizes=(240, 120)):
    """Two text parts (every token learned), b's rows about twice as long as a's, so a share of rows
    is not a share of tokens, and a pack mixing them by weight."""
    for name, n, longer in zip(("a", "b"), sizes, (0, 8)):
        path = tmp_path / f"{name}.jsonl"
        if not path.exists():
            path.write_text("".join(json.dumps({"text": f"{name}{i} " + "word " * (i % 9 + longer)}) + "\n"
                                    for i in range(n)))
    w = [f"weight: {x}" if x is not None else "" for x in weights]
    (tmp_path / "pack.yaml").write_text(textwrap.dedent(f"""
        datapack:
          data_path: {tmp_path}/{out}
          mixing_mode: shuffle
          {extra}
        default:
          tokenizer: world
          data_path: {tmp_path}/parts
          test_split: 0
        dataset:
          - source: {tmp_path}/a.jsonl
            name: a
            {w[0]}
          - source: {tmp_path}/b.jsonl
            name: b
            {w[1]}
    """))
    return tmp_path / "pack.yaml"


def _achieved(dd) -> tuple[dict[str, float], list]:
    """Each part's share of the mix's trained tokens, counted from the rows themselves."""
    from rwkv_plug.data.tokenizer import load_tokenizer

    tok = load_tokenizer("world", {})
    counts = {"a": 0, "b": 0}
    for ids, mask in zip(dd["train"]["input_ids"], dd["train"]["loss_mask"]):
        counts[tok.decode(list(ids[:1]))[0]] += sum(mask[1:])  # the first token is never a target
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}, dd["train"]["input_ids"]


@pytest.mark.parametrize("weighting, weights", [("subsample", (0.7, 0.3)), ("repeat", (0.7, 0.3)),
                                                ("subsample", (1, 3)), ("repeat", (1, 3))])
def test_weights_set_the_share_of_trained_tokens(tmp_path, weighting, weights):
    from rwkv_plug.data import store

    lines: list[str] = []
    dd, _ = build_pack(_write_weighted(tmp_path, weights, f"weighting: {weighting}"), log=lines.append)
    shares, rows = _achieved(dd)
    want = weights[0] / sum(weights)
    assert abs(shares["a"] - want) < 0.01 and abs(shares["b"] - (1 - want)) < 0.01, shares
    # subsample repeats no row and leaves some out; repeat leaves no row out and repeats some
    import datasets

    available = sum(len(datasets.load_from_disk(str(tmp_path / "parts" / i))["train"]) for i in "01")
    distinct = len({tuple(r) for r in rows})
    assert (distinct == len(rows) < available) if weighting == "subsample" else (distinct == available < len(rows))
    recorded = {p["name"]: p for p in store.read_meta(tmp_path / "mix")["mix_shares"]}
    assert abs(recorded["a"]["share"] - shares["a"]) < 1e-9
    assert recorded["b"]["rows"] + recorded["a"]["rows"] == len(rows)
    assert any(f"note: datapack part a: weight {want:.4f}, share {shares['a']:.4f}" in line for line in lines)


def test_the_same_seed_gives_the_same_mix_and_another_seed_another(tmp_path):
    one, _ = build_pack(_write_weighted(tmp_path, out="one"), log=lambda m: None)
    two, _ = build_pack(_write_weighted(tmp_path, out="two"), log=lambda m: None)
    other, _ = build_pack(_write_weighted(tmp_path, extra="seed: 7", out="three"), log=lambda m: None)
    assert one["train"]["input_ids"] == two["train"]["input_ids"]
    assert sorted(map(tuple, one["train"]["input_ids"])) != sorted(map(tuple, other["train"]["input_ids"]))
    lines: list[str] = []
    build_pack(_write_weighted(tmp_path, weights=(0.6, 0.4), out="one"), log=lines.append)
    assert not any("reusing the mix" in line for line in lines)  # new weights: rebuilt


@pytest.mark.parametrize("weights, extra, message", [
    ((-0.2, 1), "", "dataset a: weight must be 0 or more, got -0.2"),
    ((0, 0), "", "every dataset's weight is 0: at least one must be more than 0"),
    ((0.7, None), "", "weights are given for a but not for b: give every dataset a weight, or none"),
    (("lots", 1), "", "dataset a: weight must be a number (its share of trained tokens), got 'lots'"),
    ((0.5, 0.5), "weighting: upsample", "datapack.weighting must be one of subsample, repeat, got 'upsample'"),
    ((None, None), "weighting: repeat", "datapack.weighting needs a weight on every dataset (dataset[i].weight); "
                                        "without weights the parts are mixed whole"),
])
def test_bad_weights_are_one_clear_line(tmp_path, weights, extra, message):
    with pytest.raises(ConfigError) as info:
        build_pack(_write_weighted(tmp_path, weights, extra), log=lambda m: None)
    assert str(info.value).splitlines() == [f"{tmp_path / 'pack.yaml'}: {message}"]


def test_a_zero_weight_leaves_that_part_out_of_the_train_split(tmp_path):
    dd, _ = build_pack(_write_weighted(tmp_path, (1, 0)), log=lambda m: None)
    assert _achieved(dd)[0] == {"a": 1.0, "b": 0.0} and len(dd["train"]) == 240 - 1  # one row is the test split
