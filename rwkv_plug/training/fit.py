"""``rwkv-plug fit``: config -> Lightning Trainer -> model -> data -> training -> checkpoints."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rwkv_plug.core import notice
from rwkv_plug.core.errors import ConfigError, Interrupted, TrainingError
from rwkv_plug.training import options as O
from rwkv_plug.training.config import (FitConfig, lightning_kwargs, load_fit_config, logger_package_problem,
                                       sharded_strategy_problem)
from rwkv_plug.training.lightning_args import check_epoch_batches, fit_naming_refusals, lightning_errors
from rwkv_plug.training.lightning_args import refused as refused_by_lightning
from rwkv_plug.training.model_config import ModelConfig, model_config
from rwkv_plug.training.quiet import library_noise_filtered
from rwkv_plug.training.worker_errors import worker_failure


def _describe_model(model) -> str:
    """``RWKV5 L2-D64, vocab 65536, 4.33M parameters`` (the sizes a model class has)."""
    sizes = f"L{model.n_layer}-D{model.n_embd}" if hasattr(model, "n_layer") and hasattr(model, "n_embd") else ""
    params = sum(p.numel() for p in model.parameters())
    return ", ".join(part for part in (
        f"{type(model).__name__} {sizes}".strip(),
        f"vocab {model.vocab_size}" if hasattr(model, "vocab_size") else "",
        f"{params / 1e6:.2f}M parameters",
    ) if part)


def _silent(_message: str) -> None:
    pass


def _instantiate(spec: dict[str, Any], key: str):
    """Build ``class_path`` with ``init_args`` (LightningCLI form)."""
    path = str(spec["class_path"])
    if "." not in path:
        path = f"lightning.pytorch.{'loggers' if key == 'logger' else 'callbacks'}.{path}"
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"trainer.{key}: cannot import class_path '{path}': {exc}") from None
    try:
        return cls(**(spec.get("init_args") or {}))
    except Exception as exc:  # the class is the user's choice; whatever it raises is about its arguments
        text = " ".join(str(exc).split())
        raise ConfigError(f"trainer.{key}: {path}(...) failed: {type(exc).__name__}: {text}") from None


def _loggers(spec: Any, root: Path) -> Any:
    if spec is None or spec is True:  # CSV and TensorBoard, in one folder per run
        from rwkv_plug.training.runlogs import default_loggers

        return default_loggers(root)
    if spec is False:
        return False
    out = []
    for item in spec if isinstance(spec, list) else [spec]:
        if isinstance(item, str):
            missing = logger_package_problem(item)
            if missing:
                raise ConfigError(missing)
            item = {"class_path": O.LOGGERS[item.lower()][0], "init_args": {"save_dir": str(root), "name": "logs"}}
        out.append(_instantiate(item, "logger"))
    return out


def build_trainer(cfg: FitConfig, extra_callbacks: list | None = None):
    """A ``lightning.Trainer`` from the validated config (also used by tests)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    from rwkv_plug.training.checkpoint import atomic_checkpoint_io
    from rwkv_plug.training.clock import RunClock
    from rwkv_plug.training.ctrl_c import SaveOnCtrlC
    from rwkv_plug.training.progress import step_progress_bar
    from rwkv_plug.training.samples import sample_callbacks

    t = cfg.trainer
    kwargs = lightning_kwargs(t)
    refused = sharded_strategy_problem(t.strategy, t.accelerator)  # an object set in Python
    if refused:
        raise ConfigError(refused)
    from rwkv_plug.training.sharding import fsdp2_strategy, is_fsdp2

    if is_fsdp2(t.strategy, t.accelerator):  # fsdp2: Lightning's ModelParallelStrategy
        if str(t.strategy).lower() == "fsdp":
            notice.warn_once("fsdp as fsdp2", "trainer.strategy 'fsdp' runs as 'fsdp2' (FSDP1 cannot shard the "
                             "chunked BPTT engine's parameters; docs/training.md, Sharded training)")
        kwargs["strategy"] = fsdp2_strategy(cfg.world_size)
    kwargs["logger"] = _loggers(t.logger, cfg.root_dir)
    kwargs.pop("callbacks", None)
    callbacks = [_instantiate(c, "callbacks") for c in (t.callbacks or [])]
    if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        if t.enable_checkpointing is not False:
            try:
                callbacks.append(ModelCheckpoint(**cfg.checkpoint))
            except lightning_errors() as exc:
                raise refused_by_lightning(exc, str(cfg.path), "trainer.checkpoint", cfg.checkpoint) from None
    callbacks.extend(extra_callbacks or [])
    callbacks.extend(sample_callbacks(cfg.model, cfg.data))  # none unless model.sample_prompts
    callbacks.append(SaveOnCtrlC())
    callbacks.append(RunClock())  # train/elapsed_sec: the wall time `rwkv-plug report` shows
    if t.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(step_progress_bar())
    plugins = kwargs.pop("plugins", None) or []
    plugins = list(plugins) if isinstance(plugins, list) else [plugins]
    plugins.append(atomic_checkpoint_io())
    kwargs["use_distributed_sampler"] = False
    try:
        return L.Trainer(callbacks=callbacks, plugins=plugins, **kwargs)
    except lightning_errors() as exc:
        raise refused_by_lightning(exc, str(cfg.path), "trainer", lightning_kwargs(t)) from None


_SIZE_KEYS = ("n_layer", "n_embd", "vocab_size", "dim_att", "dim_ffn")


def load_training_model(m: ModelConfig | Mapping[str, Any]):
    """Load ``model.load_model`` through the model registry; given sizes must match the file.

    ``n_layer``, ``n_embd`` ... are read from the checkpoint (-1 means "use the
    file's"); a different explicit value is an error rather than a silent resize.
    """
    from rwkv_plug.models import load_model

    m = model_config(m)
    model = load_model(m.load_model, kernel=m.kernel, dropout=m.dropout, grad_cp=m.grad_cp)
    if m.wkv_precision != "auto":
        model.set_kernel(m.kernel, precision=m.wkv_precision)
    for key in _SIZE_KEYS:
        want, found = getattr(m, key), getattr(model, key, None)
        if want not in (-1, None) and found is not None and want != found:
            raise ConfigError(f"model.{key}: {want} given but {m.load_model} has {found}; "
                              "set -1 to use the file's")
    return model


def run_fit(config: str | Path, resume: str | None = None, log: Callable[[str], None] = print,
            overrides: dict[str, Any] | None = None) -> FitConfig:
    """The whole ``fit`` command; returns the config it ran. ``overrides``: ``{"trainer.max_steps": 20}``."""
    with library_noise_filtered():
        return _run_fit(config, resume, log, overrides)


def _run_fit(config: str | Path, resume: str | None, log: Callable[[str], None],
             overrides: dict[str, Any] | None = None) -> FitConfig:
    from rwkv_plug.training.checkpoint import check_resume, checkpoint_folders, earlier_run, find_resume

    cfg = load_fit_config(config, overrides=overrides)
    _check_source_exists(cfg)
    # Fail fast, cheapest first: every trainer setting, the resume file, the model file; then the data.
    trainer = build_trainer(cfg)
    if trainer.global_rank != 0:  # a `ddp` rank re-running this command: rank 0 says it all once
        log = _silent
    device = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower() or "?"
    log(
        f"batch: microbatch {cfg.microbatch_size} x devices {cfg.num_devices} ({device}) x nodes "
        f"{cfg.trainer.num_nodes} x accumulate {cfg.accumulate_grad_batches} = "
        f"{cfg.microbatch_size * cfg.world_size * cfg.accumulate_grad_batches} samples per optimizer step"
    )
    # where this config's checkpoints are: trainer.checkpoint's folder or a ModelCheckpoint's in trainer.callbacks
    ckpt = find_resume(resume, checkpoint_folders(trainer, every_version=True) or [cfg.checkpoint_dir], log)
    mixed = earlier_run(checkpoint_folders(trainer), ckpt) if trainer.global_rank == 0 else None
    if mixed:
        raise TrainingError(f"{mixed}; continue that run with `rwkv-plug fit {cfg.path} --resume auto`, or start "
                            "a new one in another folder (trainer.default_root_dir or trainer.checkpoint.dirpath)")
    model = load_training_model(cfg.model)
    log(f"model: {cfg.model.load_model}: {_describe_model(model)}")
    from rwkv_plug.training.tuning import apply_tuning

    apply_tuning(model, cfg.model, log)  # model.tuning: freeze, add the start state or the adapters
    if ckpt is not None:
        step = check_resume(ckpt, model, batches=(cfg.microbatch_size, cfg.world_size))
        if 0 < trainer.max_steps <= step:
            log(f"nothing to train: {ckpt} is at step {step} and trainer.max_steps is {trainer.max_steps}; "
                "raise trainer.max_steps to train further")
            return cfg
    module = _training_module(cfg, trainer, model, log)
    try:
        _fit(trainer, module, cfg, ckpt)
    finally:  # after Lightning made the log folder (a CSV logger warns about one it did not make)
        if trainer.global_rank == 0:
            _keep_config(trainer, cfg)
    if trainer.global_rank == 0:
        _report(trainer, log)
    return cfg


def _check_source_exists(cfg: FitConfig) -> None:
    """One stat: a typo in a local data.source fails before the trainer, model and tokenizer load."""
    missing = missing_source(cfg.data)
    if missing:
        raise ConfigError(f"{cfg.path}: {missing}")


def missing_source(data: Mapping[str, Any]) -> str | None:
    """Why ``data.source`` is a local path that does not exist (fit would stop on it), or None."""
    from rwkv_plug.data.sources import missing_local_source

    if data.get("skip_datapath_setup"):  # the source is not read
        return None
    return missing_local_source(str(data.get("source") or ""))


def _training_module(cfg: FitConfig, trainer, model, log: Callable[[str], None]):
    """The data (built or reused, checked against the model's vocabulary) and the LightningModule."""
    import torch

    from rwkv_plug.data.pipeline import prepare_dataset
    from rwkv_plug.training.module import RwkvTrainingModule, TrainSettings
    from rwkv_plug.models.vocab import check_tokenizer_fits, check_vocab

    m = cfg.model
    check_tokenizer_fits(cfg.data, model.vocab_size, m.load_model)  # before building the data
    dataset, _ = prepare_dataset(cfg.data, log=log)  # it says whether it built or reused
    if "train" not in dataset or len(dataset["train"]) == 0:
        raise TrainingError(f"the dataset at {cfg.data.data_path} has no training rows")
    check_vocab(cfg.data, dataset, model.vocab_size, m.load_model, log)
    if m.torch_set_float32_matmul_precision:
        torch.set_float32_matmul_precision(m.torch_set_float32_matmul_precision)
    if cfg.seed is not None:
        import lightning as L

        L.seed_everything(cfg.seed, verbose=False)
    settings = TrainSettings(
        model=m,
        microbatch_size=cfg.microbatch_size,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        shuffle=cfg.data.dataloader_shuffle_training and not cfg.data.sort_by_length,
        seed=cfg.seed or 0,
        prefetch=cfg.data.dataloader_prefetch_factor,
        pin_memory=cfg.data.dataloader_pin_memory,
    )
    train, test = dataset["train"], dataset.get("test")
    if cfg.data.dataloader_swap_train_test_split:  # a debugging aid of the earlier trainer
        log("data.dataloader_swap_train_test_split: training on the test split, validating on the train split")
        train, test = test, train
    _check_record_resets(cfg, model, train)
    log(_padding_report(cfg, settings, train))
    module = RwkvTrainingModule(model, settings, train, test)
    check_epoch_batches(trainer, module.batches_per_epoch(trainer.world_size), str(cfg.path))
    return module


def _check_record_resets(cfg: FitConfig, model, train) -> None:
    """Reset-packed data (``data.packing_state: reset``): only a kernel that resets the state at
    record starts will do, and every start must fall on its chunk grid in every ctx_len chunk."""
    from rwkv_plug.data.pack import RECORD_STARTS

    if RECORD_STARTS not in (getattr(train, "column_names", None) or ()):
        return
    align = cfg.data.packing_align
    if cfg.model.ctx_len % align:
        raise TrainingError(f"model.ctx_len {cfg.model.ctx_len} is not a multiple of data.packing_align "
                            f"{align}: packed records would start off the kernel's chunk grid; make model.ctx_len "
                            "a multiple of it (or set data.packing_state: carry)")
    if not callable(getattr(model, "require_resets", None)):
        raise TrainingError(f"the {type(model).__name__} model cannot reset its state at packed record starts; "
                            "set data.packing_state: carry and rebuild the data")
    model.require_resets()


def _padding_report(cfg: FitConfig, settings, train) -> str:
    """The padding share of the first epoch's batches, over every rank (``padding: ...``)."""
    from rwkv_plug.training.batches import ResumableSampler
    from rwkv_plug.training.padding import padding_line, padding_share, sample_lengths

    world = cfg.world_size
    orders = [ResumableSampler(len(train), world, r, settings.shuffle, settings.seed).indices(0) for r in range(world)]
    share = padding_share(sample_lengths(train), cfg.microbatch_size, orders)
    return padding_line(share, cfg.microbatch_size, cfg.data.packing_enable, " of an epoch")


def _keep_config(trainer, cfg: FitConfig) -> None:
    """A copy of the config file, as written (with any command-line overrides applied), next to
    the run's logs (``config.yaml``)."""
    from rwkv_plug.core.atomic import atomic_write
    from rwkv_plug.core.overrides import override_header

    logger = trainer.loggers[0] if trainer.loggers else None
    folder = getattr(logger, "log_dir", None) or (logger.save_dir if logger else None) or cfg.root_dir
    text = Path(cfg.path).read_bytes()
    if cfg.overrides:
        import yaml

        text = (override_header(cfg.overrides) + yaml.safe_dump(cfg.raw, sort_keys=False)).encode()
    atomic_write(Path(folder) / "config.yaml", lambda f: f.write(text))


def _fit(trainer, module, cfg: FitConfig, ckpt: str | None) -> None:
    """``trainer.fit``, with Ctrl-C, a failed ddp_spawn rank and Lightning's refusals as one line each."""
    for lg in trainer.loggers:
        # Fix each logger's version folder now: ddp_spawn workers get a copy with it resolved, so
        # the folder printed afterwards is the one they wrote (resolved later it would be the next one).
        getattr(lg, "version", None)
    with warnings.catch_warnings():
        # our sampler skips the consumed microbatches itself
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        if ckpt is not None:  # resuming writes into the folder it resumes from, as it should
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        try:
            fit_naming_refusals(trainer, str(cfg.path), lightning_kwargs(cfg.trainer), module, ckpt_path=ckpt, weights_only=True)
        except SystemExit:
            # Lightning answers Ctrl-C with its own shutdown and sys.exit(1); say what is kept instead
            if not trainer.interrupted:
                raise
            if trainer.global_rank != 0:  # a `ddp` rank running this command too: rank 0 says it
                raise SystemExit(Interrupted.exit_code) from None
            raise _interrupted(trainer, cfg) from None
        except Exception as exc:
            failure = worker_failure(exc)  # a ddp_spawn rank's failure, as one line
            if failure is None:
                raise
            raise failure from exc


def _interrupted(trainer, cfg: FitConfig) -> Interrupted:
    """What a Ctrl-C kept: the step it saved, else the newest checkpoint, else nothing (no resume hint)."""
    from rwkv_plug.training.checkpoint import checkpoint_folders, newest_in_folders, shown_path
    from rwkv_plug.training.ctrl_c import SaveOnCtrlC

    resume = f"continue with `rwkv-plug fit {cfg.path} --resume auto`"
    saver = next((c for c in trainer.callbacks if isinstance(c, SaveOnCtrlC)), None)
    if saver is not None and saver.saved is not None:
        path, step = saver.saved
        return Interrupted(f"training interrupted: step {step} saved to {shown_path(Path(path))}; {resume}")
    # ddp_spawn: the ranks are other processes, still finishing their step; what they saved is on disk
    spawned = _join_spawned_ranks(trainer)
    reached = "" if spawned else f" at step {trainer.global_step}"
    newest = newest_in_folders(checkpoint_folders(trainer))
    if newest is None:
        return Interrupted(f"training interrupted{reached} before any checkpoint was written; nothing is saved "
                           "(a single Ctrl-C saves the step in progress; a second one stops without saving)")
    if not spawned and newest[1] == trainer.global_step:
        return Interrupted(f"training interrupted at step {newest[1]}, which {newest[0]} holds; {resume}")
    held = f"step {newest[1]}" if newest[1] >= 0 else "an unreadable state"
    return Interrupted(f"training interrupted{reached}; the newest checkpoint, {newest[0]}, holds {held}; {resume}")


def _join_spawned_ranks(trainer) -> bool:
    """Wait for ``ddp_spawn``'s rank processes to end (they save the step in progress on the same
    Ctrl-C, or stop at a second one); whether there were any."""
    import multiprocessing.process

    procs = [p for p in getattr(trainer.strategy.launcher, "procs", None) or []
             if isinstance(p, multiprocessing.process.BaseProcess)]
    for proc in procs:
        proc.join()
    return bool(procs)


def _report(trainer, log: Callable[[str], None]) -> None:
    """Where the checkpoints and logs went, and any trained steps no checkpoint holds."""
    from rwkv_plug.training.checkpoint import checkpoint_folders, unsaved_steps_note

    for folder in checkpoint_folders(trainer):
        log(f"checkpoints: {folder}")
    note = unsaved_steps_note(trainer)
    if note:
        log(note)
    shown: list[str] = []
    for lg in trainer.loggers:  # one line per folder: the default TensorBoard log sits in the CSV log's
        folder = str(getattr(lg, "log_dir", None) or lg.save_dir)
        if not any(folder == s or folder.startswith(s.rstrip("/") + "/") for s in shown):
            shown.append(folder)
    for folder in shown:
        log(f"logs: {folder}")
