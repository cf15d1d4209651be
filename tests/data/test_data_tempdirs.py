"""Temp folders an outright kill left next to data_path are removed by the next build, and only those."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from rwkv_plug.core import leftovers
from rwkv_plug.data import tempdirs
from test_data_interrupt import preload_busy_in_workers

pytestmark = pytest.mark.skipif(os.name != "posix", reason="processes are probed with POSIX signals")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_this_hosts_folders_of_dead_processes(tmp_path):
    data_path = tmp_path / "ds"
    host, dead = leftovers._host(), dead_pid()
    mine = tempdirs.make(data_path, "build")  # this (live) process's
    names = {
        "dead_build": f".ds.build-{host}-{dead}-ab_12",
        "dead_work": f".ds.work-{host}-{dead}-x9",
        "dead_old": f".ds.old-{host}-{dead}-q",
        "other_host": f".ds.build-elsewhere-{dead}-ab",
        "other_dataset": f".ds2.build-{host}-{dead}-ab",
        "not_ours": f".ds.backup-{host}-{dead}-ab",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.arrow").write_text("x")
    (tmp_path / f".ds.build-{host}-{dead}-file").write_text("a file, not a folder")
    removed = tempdirs.sweep(data_path)
    assert sorted(p.name for p in removed) == sorted(names[k] for k in ("dead_build", "dead_work", "dead_old"))
    left = {p.name for p in tmp_path.iterdir()}
    assert mine.name in left and names["other_host"] in left and names["other_dataset"] in left
    assert names["not_ours"] in left and f".ds.build-{host}-{dead}-file" in left


@pytest.mark.slow
def test_a_killed_preload_leaves_folders_the_next_one_removes(tmp_path, offline_data):
    from conftest import run_cli

    preload_busy_in_workers(tmp_path, signal.SIGKILL)  # no cleanup can run
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    assert any(".out.build-" in n for n in left) and any(".out.work-" in n for n in left), left
    res = run_cli("preload", str(tmp_path / "cfg.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in left:
        assert f"removed {tmp_path / name}, left behind by a build that was killed" in res.stdout + res.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert (tmp_path / "out" / "rwkv_plug_dataset.json").is_file()
