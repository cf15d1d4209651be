"""The data: keys fit reads for its loaders: worker processes, pinning, the swapped splits."""

from __future__ import annotations

import pytest

from fit_project import _losses, _setup, _tokenizer

pytestmark = pytest.mark.slow  # every test here takes seconds: fit runs, subprocesses or the Triton interpreter


@pytest.fixture
def project(tmp_path, offline_data):
    from rwkv_plug.models.init import init_state_dict
    from rwkv_plug.models.io import save_state_dict

    _tokenizer(tmp_path / "tok")
    save_state_dict(init_state_dict(2, 64, 64, seed=0), tmp_path / "model.pth")
    return _setup(tmp_path, max_steps=3)


def _run(cfg, name: str, extra: str) -> tuple[list[float], list[str]]:
    from rwkv_plug.training.fit import run_fit

    path = cfg.with_name(f"{name}.yaml")
    path.write_text(cfg.read_text().replace("data:\n", f"data:\n{extra}"))
    lines: list[str] = []
    run_fit(path, log=lines.append)
    return _losses(cfg.parent / "runs" / name), lines


def test_worker_processes_give_the_same_training_as_the_main_process(project):
    inline, _ = _run(project, "inline", "")
    workers, _ = _run(project, "workers", "  dataloader_prefetch_factor: 2\n  dataloader_pin_memory: true\n")
    assert len(inline) == 3 and workers == pytest.approx(inline, rel=0, abs=1e-6)


def test_swapping_the_splits_trains_on_the_test_rows_and_says_so(project):
    inline, _ = _run(project, "inline", "")
    swapped, lines = _run(project, "swapped", "  dataloader_swap_train_test_split: true\n")
    assert "data.dataloader_swap_train_test_split: training on the test split, validating on the train split" in lines
    # the 2 test rows make one microbatch an epoch: 3 steps take 3 epochs, on other rows than before
    assert len(swapped) == 3 and swapped[0] != pytest.approx(inline[0], rel=0, abs=1e-6)
