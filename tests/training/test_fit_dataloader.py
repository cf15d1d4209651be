"""The data: keys fit reads for its loaders: worker processes, pinning, the swapped splits."""

from __future__ import annotations

import os

import pytest

from fit_project import _losses, _setup, _tokenizer

pytestmark = pytest.mark.slow  # every test here takes seconds: fit runs, subprocesses or the Triton interpreter


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny fit project, its dataset built and trained 3 steps in the main process (the run
    both tests compare against): (config, losses of that run)."""
    from rwkv_plug.core import plugins
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict

    root = tmp_path_factory.mktemp("dataloader")
    _tokenizer(root / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), root / "model.pth")
    cfg = _setup(root, max_steps=3)
    with pytest.MonkeyPatch.context() as mp:  # as the function-scoped fixtures set it for a test
        mp.chdir(root)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("RWKV_PLUG_PLUGINS", os.environ.get("RWKV_PLUG_TEST_PLUGINS", "none"))
        plugins.reset()
        try:
            inline, _ = _run(cfg, "inline", "")
        finally:
            plugins.reset()
    return cfg, inline


def _run(cfg, name: str, extra: str) -> tuple[list[float], list[str]]:
    from rwkv_plug.training.fit import run_fit

    path = cfg.with_name(f"{name}.yaml")
    path.write_text(cfg.read_text().replace("data:\n", f"data:\n{extra}"))
    lines: list[str] = []
    run_fit(path, log=lines.append)
    return _losses(cfg.parent / "runs" / name), lines


def test_worker_processes_give_the_same_training_as_the_main_process(project, offline_data, monkeypatch):
    cfg, inline = project
    monkeypatch.chdir(cfg.parent)  # the dataset the first run built is reused
    workers, _ = _run(cfg, "workers", "  dataloader_prefetch_factor: 2\n  dataloader_pin_memory: true\n")
    assert len(inline) == 3 and workers == pytest.approx(inline, rel=0, abs=1e-6)


def test_swapping_the_splits_trains_on_the_test_rows_and_says_so(project, offline_data, monkeypatch):
    cfg, inline = project
    monkeypatch.chdir(cfg.parent)
    swapped, lines = _run(cfg, "swapped", "  dataloader_swap_train_test_split: true\n")
    assert "data.dataloader_swap_train_test_split: training on the test split, validating on the train split" in lines
    # the 2 test rows make one microbatch an epoch: 3 steps take 3 epochs, on other rows than before
    assert len(swapped) == 3 and swapped[0] != pytest.approx(inline[0], rel=0, abs=1e-6)
