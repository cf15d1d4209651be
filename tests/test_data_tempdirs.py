"""Temp folders an outright kill left next to data_path are removed by the next build, and only those."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rwkv_plug.core import leftovers
from rwkv_plug.data import tempdirs
from test_data_interrupt import SLOW_PRELOAD

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


def test_a_killed_preload_leaves_folders_the_next_one_removes(tmp_path, offline_data):
    import json
    import textwrap

    rows = [{"prompt": f"q {i} " + "word " * 40, "completion": f"a {i} " + "text " * 40} for i in range(5000)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(textwrap.dedent(f"""
        data:
          source: {tmp_path / 'qa.jsonl'}
          tokenizer: neox
          data_path: {tmp_path / 'out'}
          num_proc: 2
          multi_column_keys: [prompt, completion]
    """))
    (tmp_path / "slow.py").write_text(SLOW_PRELOAD)
    marker = tmp_path / "busy"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "slow.py"), str(marker), str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "RWKV_PLUG_PLUGINS": "none"})
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # no cleanup can run
    proc.wait(timeout=60)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    assert any(".out.build-" in n for n in left) and any(".out.work-" in n for n in left), left

    from conftest import run_cli

    res = run_cli("preload", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in left:
        assert f"removed {tmp_path / name}, left behind by a build that was killed" in res.stdout + res.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert (tmp_path / "out" / "rwkv_plug_dataset.json").is_file()
