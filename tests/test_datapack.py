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


def test_the_parts_must_share_a_tokenizer(tmp_path):
    pack = _write_pack(tmp_path, second_tokenizer="tokenizer: neox")
    with pytest.raises(DataError, match="must share one tokenizer, but a: world .*dataset_1: neox"):
        build_pack(pack, log=lambda m: None)


def test_mistakes_in_the_pack_file_are_reported_together(tmp_path):
    (tmp_path / "pack.yaml").write_text("datapack: {mixing_mode: zip, size: 3}\ndataset:\n  - {source: x.txt}\n")
    with pytest.raises(ConfigError) as info:
        build_pack(tmp_path / "pack.yaml", log=lambda m: None)
    msg = str(info.value)
    assert "unknown key datapack.size" in msg and "datapack.data_path is required" in msg
    assert "datapack.mixing_mode must be one of concat, shuffle, got 'zip'" in msg
    assert "dataset[0]: data.data_path is required" in msg


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
