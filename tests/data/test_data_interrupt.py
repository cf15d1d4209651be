"""Ctrl-C while worker processes tokenise: one line, exit 130, no worker tracebacks, nothing written."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rwkv_plug.data.workers import main_handles_ctrl_c


def _child_sigint_handler(queue) -> None:
    handler = signal.getsignal(signal.SIGINT)
    queue.put("ignored" if handler is signal.SIG_IGN else "default" if handler is signal.default_int_handler else "?")


def _fork_and_ask() -> str:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_sigint_handler, args=(queue,))
    child.start()
    child.join(timeout=30)
    return queue.get(timeout=30)


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="only platforms that fork have fork hooks")
def test_children_forked_inside_the_block_ignore_ctrl_c_and_others_do_not():
    assert _fork_and_ask() == "default"
    with main_handles_ctrl_c():
        assert _fork_and_ask() == "ignored"
        with main_handles_ctrl_c():  # nesting is fine
            assert _fork_and_ask() == "ignored"
        assert _fork_and_ask() == "ignored"
    assert _fork_and_ask() == "default"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process is untouched


# Runs `rwkv-plug preload` with every encoder batch slowed down and announced in a file,
# so the test can press Ctrl-C while the workers are busy.
SLOW_PRELOAD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from rwkv_plug.data import encode

    marker = Path(sys.argv[1])
    call = encode.Encoder.__call__

    def slow(self, *args, **kwargs):
        marker.write_text("busy")
        time.sleep(0.5)
        return call(self, *args, **kwargs)

    encode.Encoder.__call__ = slow
    from rwkv_plug.core.cli import main
    main(["preload", sys.argv[2]])
""")


def preload_busy_in_workers(tmp_path, signum: int) -> tuple[int, str]:
    """Start a slowed `rwkv-plug preload` (2 worker processes, its own process group) and send
    ``signum`` to the whole group once the workers are tokenising; its exit status and stderr."""
    rows = [{"prompt": f"question {i} " + "word " * 40, "completion": f"answer {i} " + "text " * 40}
            for i in range(5000)]  # over 1 MB, so tokenising goes to worker processes
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(f"""
        data:
          source: {tmp_path / 'qa.jsonl'}
          tokenizer: neox
          data_path: {tmp_path / 'out'}
          num_proc: 2
          multi_column_keys: [prompt, completion]
          multi_column_prefix: [null, null]
          multi_column_train_mask: [false, true]
    """))
    (tmp_path / "slow.py").write_text(SLOW_PRELOAD)
    marker = tmp_path / "busy"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "slow.py"), str(marker), str(tmp_path / "cfg.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "RWKV_PLUG_PLUGINS": "none"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=60)
        time.sleep(0.2)
        os.killpg(proc.pid, signum)  # a terminal's Ctrl-C (SIGINT) reaches the whole group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err


@pytest.mark.slow
def test_ctrl_c_while_workers_tokenise_exits_130_with_one_line(tmp_path, offline_data):
    status, err = preload_busy_in_workers(tmp_path, signal.SIGINT)
    assert status == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.rstrip().splitlines()[-1] == "interrupted"
    assert not (tmp_path / "out").exists()
