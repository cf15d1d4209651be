"""`rwkv-plug report`: a tiny run's summary table equals its CSV log; its PNG holds the curves.

One tiny CPU fit (module-scoped) also shows that the default loggers write CSV and TensorBoard.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from fit_project import _setup, _tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 4-step run validating every 2 steps (val_check_interval counts microbatches; accumulate 2)."""
    from rwkv_plug.core import plugins
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict
    from rwkv_plug.training.fit import run_fit

    tmp = tmp_path_factory.mktemp("run")
    here = os.getcwd()
    os.chdir(tmp)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        plugins.reset()
        _tokenizer(tmp / "tok")
        save_state_dict(init_state_dict(1, 64, 64, seed=0), tmp / "model.pth")
        cfg = _setup(tmp, max_steps=4)
        cfg.write_text(cfg.read_text().replace("enable_model_summary: false",
                                               "enable_model_summary: false\n  val_check_interval: 4"))
        run_fit(cfg, log=lambda _m: None)
    finally:
        os.chdir(here)
        plugins.reset()
    return tmp / "runs" / "cfg"


def _csv_rows(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "version_0" / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _column(rows, name) -> list[tuple[int, float]]:
    return [(int(r["step"]) + 1, float(r[name])) for r in rows if r.get(name)]


def test_default_loggers_write_csv_and_tensorboard_in_one_folder(tiny_run):
    folder = tiny_run / "logs" / "version_0"
    assert (folder / "metrics.csv").is_file() and (folder / "config.yaml").is_file()
    events = list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "validation/loss", "train/lr"} <= set(tags)
    # no model.sample_prompts: no samples anywhere
    assert not (folder / "samples.txt").exists() and not (folder / "samples.csv").exists()
    assert not [t for t in acc.Tags()["tensors"] if t.startswith("samples/")]
    board = [e.value for e in acc.Scalars("train/loss")]
    assert board == pytest.approx([v for _, v in _column(_csv_rows(tiny_run), "train/loss")], rel=1e-6)


def test_summary_equals_the_csv(tiny_run):
    from rwkv_plug.training.report import summarize
    from rwkv_plug.training.runlogs import read_run

    rows = _csv_rows(tiny_run)
    train, valid = _column(rows, "train/loss"), _column(rows, "validation/loss")
    assert len(train) == 4 and len(valid) == 2  # validated after steps 2 and 4
    s = summarize(read_run(tiny_run))
    assert s.steps == 4
    assert s.tokens == float([r["train/tokens"] for r in rows if r["train/tokens"]][-1])
    assert s.train_last == train[-1] and s.valid_last == valid[-1]
    assert s.train_best == min(train, key=lambda sv: sv[1]) and s.valid_best == min(valid, key=lambda sv: sv[1])
    assert s.lr_last == float([r["train/lr"] for r in rows if r["train/lr"]][-1])
    elapsed = [float(r["train/elapsed_sec"]) for r in rows if r.get("train/elapsed_sec")]
    assert len(elapsed) == 4 and s.wall_seconds == max(elapsed) > 0


def test_report_command_prints_the_table_and_writes_a_png_with_the_curves(tiny_run, tmp_path, cli):
    import matplotlib.image

    out = tmp_path / "curves.png"
    result = cli("report", str(tiny_run), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = _csv_rows(tiny_run)
    last_train = _column(rows, "train/loss")[-1]
    table = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.stdout.splitlines()[1:-1])
    assert table["steps"] == "4" and table["train loss, last"] == f"{last_train[1]:.4f} (step 4)"
    assert table["tokens"] == f"{int(float(rows[-2]['train/tokens'])):,}"
    assert re.fullmatch(r"\d+m\d\ds", table["wall time"]) and result.stdout.endswith(f"curves: {out}\n")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape[0] == 600 and image.shape[1] == 800  # 8x6 inches at 100 dpi
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_plot_draws_train_validation_and_lr_from_the_log(tiny_run, tmp_path):
    from rwkv_plug.training.report import plot_run
    from rwkv_plug.training.runlogs import read_run

    drawn = plot_run(read_run(tiny_run), tmp_path / "r.png")
    rows = _csv_rows(tiny_run)
    assert set(drawn) == {"train loss", "validation loss", "learning rate"}
    for label, column in (("train loss", "train/loss"), ("validation loss", "validation/loss"),
                          ("learning rate", "train/lr")):
        want = _column(rows, column)
        assert list(zip(drawn[label].steps, drawn[label].values)) == want


def test_a_resumed_run_reads_every_version_and_later_steps_win(tmp_path):
    from rwkv_plug.training.report import summarize
    from rwkv_plug.training.runlogs import read_run

    head = "epoch,step,train/loss,train/lr,train/tokens,train/elapsed_sec,validation/loss\n"
    for version, body in ((0, "0,0,5.0,0.1,10,2.0,\n0,1,4.0,0.1,20,4.0,\n0,1,,,,,4.5\n"),
                          (1, "0,1,3.5,0.1,20,1.0,\n0,2,3.0,0.1,30,3.0,\n")):
        folder = tmp_path / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(head + body)
    log = read_run(tmp_path)
    assert log.get("train/loss").steps == [1, 2, 3] and log.get("train/loss").values == [5.0, 3.5, 3.0]
    s = summarize(log)
    assert s.steps == 3 and s.tokens == 30 and s.wall_seconds == 7.0 and s.valid_best == (2, 4.5)


def test_a_folder_without_logs_is_one_clear_error(tmp_path, cli):
    result = cli("report", str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "holds no metrics.csv" in result.stderr
