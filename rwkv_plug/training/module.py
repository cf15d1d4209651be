"""The LightningModule: chunked loss, optimizer, data loaders, resume position.

The RWKV ``nn.Module`` lives at ``self.model``, so checkpoint keys are
``model.<official name>`` (the export command strips ``model.``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from rwkv_plug.core.errors import ConfigError
from rwkv_plug.training import quiet, rng
from rwkv_plug.training.bptt import BpttSettings, sequence_loss
from rwkv_plug.training.checkpoint import epoch_end_as_batch_end, mark_resumed_step_saved
from rwkv_plug.training.batches import EvalRows, EvalSampler, ResumableSampler, collate
from rwkv_plug.training.model_config import ModelConfig, model_config
from rwkv_plug.training.optim import LrSchedule, build_optimizer, schedule_steps


@dataclass
class TrainSettings:
    """What the module needs from the config (see ``docs/config.md``)."""

    #: the ``model:`` section (a plain mapping is turned into one, its missing keys at their defaults)
    model: ModelConfig
    microbatch_size: int = 1
    accumulate_grad_batches: int = 1
    shuffle: bool = False
    seed: int = 0
    #: DataLoader worker processes, each prefetching this many batches (0: the main process collates)
    prefetch: int = 0
    pin_memory: bool = False

    def __post_init__(self) -> None:
        self.model = model_config(self.model)

    @property
    def bptt(self) -> BpttSettings:
        m = self.model
        return BpttSettings(
            ctx_len=m.ctx_len,
            learning=m.bptt_learning,
            truncated=m.bptt_truncated_learning,
            learning_range=m.bptt_learning_range,
            head_chunk=m.head_chunk_tokens,
            kept_states=m.bptt_kept_states,
        )


class RwkvTrainingModule(L.LightningModule):
    """Trains ``model`` on a dataset of ``input_ids``/``loss_mask`` rows."""

    def __init__(self, model: torch.nn.Module, settings: TrainSettings, train_data=None, val_data=None):
        super().__init__()
        self.model = model
        self.settings = settings
        from rwkv_plug.training.tuning import is_tuned

        # a tuned run's checkpoints hold only the trainable tensors (tuning.slim_checkpoint)
        self.strict_loading = not is_tuned(model)
        self.bptt = settings.bptt
        self.train_data, self.val_data = train_data, val_data
        # the data position: microbatches trained in the sampler's epoch ``_data_epoch``
        self._data_epoch, self._epoch_batches = 0, 0
        self._sampler: ResumableSampler | None = None
        self._resume: tuple[int, int] | None = None
        self._tokens = 0
        self._trained = 0
        self._last_time: float | None = None
        self._rng_states: list[dict[str, Any]] | None = None  # from a checkpoint, until training starts
        self._val_sums: torch.Tensor | None = None
        # (global step, microbatches, data loss sum, learned loss sum) of the step in progress
        self._step_sums: tuple[int, int, torch.Tensor, torch.Tensor] | None = None

    # -- multi-device sync --------------------------------------------------
    def _sync_chunks(self, chunks: int) -> int:
        """All ranks run the same number of chunks: the max over ranks."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return chunks
        t = torch.tensor([chunks], device=self.device, dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    # -- steps ---------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = sequence_loss(
            self.model, batch["input_ids"], batch["loss_mask"], self.bptt, train=True, sync_chunks=self._sync_chunks,
            resets=batch.get("resets"),
        )
        # Counted against the sampler's epoch, not the epoch hooks: Lightning does not call
        # on_train_epoch_start for an epoch it resumes, nor for the one after a resumed last batch.
        epoch = self._sampler.epoch if self._sampler is not None else self.current_epoch
        if epoch != self._data_epoch:
            self._data_epoch, self._epoch_batches = epoch, 0
        self._epoch_batches += 1
        now = time.perf_counter()
        tokens = int(batch["lengths"].sum())
        self._tokens += tokens
        self._trained += out.trained_tokens
        sync = self.settings.model.consolidated_logging
        bs = batch["input_ids"].shape[0]
        loss, learn_loss = self._step_means(out.data_loss, out.loss.detach())
        self.log("train/loss", loss, prog_bar=True, sync_dist=sync, batch_size=bs)
        if out.loss.requires_grad and self.bptt.learning_range > 0:
            self.log("train/learn_loss", learn_loss, sync_dist=sync, batch_size=bs)
        self.log("train/trained_tokens", float(self._trained), reduce_fx="sum", sync_dist=sync, batch_size=bs)
        self.log("train/tokens", float(self._tokens), reduce_fx="sum", sync_dist=sync, batch_size=bs)
        if self._last_time is not None:
            rate = tokens / max(now - self._last_time, 1e-9)
            self.log("train/tokens_per_sec", rate, prog_bar=True, reduce_fx="sum", sync_dist=sync, batch_size=bs)
        self._last_time = now
        opt = self.optimizers(use_pl_optimizer=False)
        lr = next(g["lr"] / g["lr_scale"] for g in opt.param_groups)
        self.log("train/lr", lr, prog_bar=True, batch_size=bs)
        return out.loss

    def _step_means(self, data_loss: torch.Tensor, learn_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The losses of the optimizer step so far: the mean over its microbatches.

        Each microbatch's loss is its masked-token mean, and the step's gradient is the
        mean of their gradients (Lightning divides by the accumulation, DDP averages over
        ranks), so this is the loss the step descends. Lightning logs the value of a step's
        last microbatch, which then covers them all; ``sync_dist`` averages it over ranks,
        which all run the same number of microbatches.
        """
        if self._step_sums is None or self._step_sums[0] != self.global_step:
            self._step_sums = (self.global_step, 0, torch.zeros_like(data_loss), torch.zeros_like(learn_loss))
        step, count, data_sum, learn_sum = self._step_sums
        self._step_sums = (step, count + 1, data_sum + data_loss, learn_sum + learn_loss)
        return (data_sum + data_loss) / (count + 1), (learn_sum + learn_loss) / (count + 1)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        m = self.settings.model
        if m.substep_cuda_cache_clear and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if m.substep_logging:
            print()

    # -- validation: masked CE over every target token of the test split, all ranks together
    def on_validation_epoch_start(self) -> None:
        dt = torch.float32 if self.device.type == "mps" else torch.float64
        self._val_sums = torch.zeros(2, dtype=dt, device=self.device)  # (CE sum, target tokens)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = sequence_loss(self.model, batch["input_ids"], batch["loss_mask"], self.bptt, train=False,
                            resets=batch.get("resets"))
        tokens = batch["loss_mask"][:, 1:].sum()  # out.loss = CE sum / max(tokens, 1)
        self._val_sums[0] += out.loss.to(self._val_sums.dtype) * tokens
        self._val_sums[1] += tokens

    def on_validation_epoch_end(self) -> None:
        total, tokens = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum").tolist()
        # the value is already global; sync_dist only keeps Lightning from warning per rank
        self.log("validation/loss", total / max(tokens, 1.0), prog_bar=True, sync_dist=True)

    # -- optimizer -------------------------------------------------------------
    def batches_per_epoch(self, world: int) -> int:
        """Microbatches per rank in one epoch (the train loader's length)."""
        return -(-(len(self.train_data) // world) // self.settings.microbatch_size)

    def trained_batches_per_epoch(self) -> int:
        """Microbatches per rank an epoch really trains, after ``trainer.limit_train_batches``."""
        trainer = self._trainer
        batches = self.batches_per_epoch(trainer.world_size if trainer is not None else 1)
        limit = getattr(trainer, "limit_train_batches", None)
        if isinstance(limit, int) and not isinstance(limit, bool):
            batches = min(batches, limit)
        elif isinstance(limit, float):
            batches = int(batches * limit)
        return batches

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (an epoch's last partial accumulation still steps, as in Lightning)."""
        return max(1, -(-self.trained_batches_per_epoch() // self.settings.accumulate_grad_batches))

    def setup(self, stage: str) -> None:
        # A ddp_spawn worker does not inherit run_fit's warning filters; it only ever trains.
        quiet.ignore_known_warnings()

    def configure_model(self) -> None:
        # trainer.strategy: fsdp2 (Lightning's ModelParallelStrategy): FSDP2 over the data-parallel ranks
        from lightning.pytorch.strategies import ModelParallelStrategy

        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            from rwkv_plug.training.sharding import shard_model

            shard_model(self.model, self.device_mesh["data_parallel"])

    def teardown(self, stage: str) -> None:
        # Lightning's last hook (after the strategy's teardown). Lightning destroys only
        # NCCL process groups at exit; a gloo group left alive can abort a spawned
        # worker as it exits ("terminate called without an active exception").
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def configure_optimizers(self):
        m = self.settings.model
        total = schedule_steps(
            m.lr_period, m.lr_period_type, self.trainer.max_steps, self.trainer.max_epochs, self.steps_per_epoch()
        )
        schedule = LrSchedule(m.lr_init, m.lr_final, m.lr_type, m.warmup_steps, total)
        from rwkv_plug.models.loading import arch_of  # the model's architecture declares its groups

        opt, sched = build_optimizer(self.model, m, schedule, arch_of(self.model))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # -- data ------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        sampler = ResumableSampler(
            len(self.train_data), t.world_size, t.global_rank, self.settings.shuffle, self.settings.seed
        )
        if self._resume is not None:
            epoch, batches = self._resume
            sampler.skip(epoch, batches * self.settings.microbatch_size)
        self._sampler = sampler
        return DataLoader(
            self.train_data,
            batch_size=self.settings.microbatch_size,
            sampler=sampler,
            collate_fn=collate,
            generator=self._loader_generator(),
            **self._loader_workers(),
        )

    def val_dataloader(self) -> DataLoader:
        t = self.trainer
        data = EvalRows(self.val_data if self.val_data is not None else [])
        sampler = EvalSampler(len(data), t.world_size, t.global_rank)
        return DataLoader(
            data, batch_size=self.settings.microbatch_size, sampler=sampler, collate_fn=collate,
            generator=self._loader_generator(), **self._loader_workers(),
        )

    def _loader_workers(self) -> dict[str, Any]:
        """Worker processes and memory pinning of both loaders (data.dataloader_prefetch_factor /
        data.dataloader_pin_memory); pinning only where a CUDA device will read the batches."""
        n = self.settings.prefetch
        pin = self.settings.pin_memory and self.device.type == "cuda"
        return {"num_workers": n, "prefetch_factor": n, "pin_memory": pin} if n > 0 else {"pin_memory": pin}

    def _loader_generator(self) -> torch.Generator:
        # Each loader has its own generator: starting an iterator draws a worker seed, and drawn
        # from the global stream it would shift dropout after a resume (Lightning starts the
        # iterators of a resumed run at other moments than those of an uninterrupted one).
        return torch.Generator().manual_seed(self.settings.seed)

    # -- resume position ---------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._last_time = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rwkv_plug"] = {
            "epoch": int(self._data_epoch),
            "epoch_batches": int(self._epoch_batches),
            "tokens": int(self._tokens),
            "trained_tokens": int(self._trained),
            # what epoch_batches counts in: a resume inside an epoch needs the same
            "microbatch_size": int(self.settings.microbatch_size),
            "world_size": int(self.trainer.world_size),
            "epoch_complete": bool(self._epoch_batches >= self.trained_batches_per_epoch()),
            # every rank's random state (Lightning calls this hook on all ranks; rank 0 writes):
            # dropout after a resume draws the same masks as an uninterrupted run
            "rng": rng.gather(rng.capture(self.device)),
        }
        from rwkv_plug.training.tuning import slim_checkpoint

        slim_checkpoint(checkpoint, self.model, self.settings.model)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pos = checkpoint.get("rwkv_plug")
        tuning = pos.get("tuning") if isinstance(pos, dict) else None
        if tuning:  # a tuned checkpoint holds no base weights: they must be the same file's
            from rwkv_plug.training.tuning import base_mismatch

            why = base_mismatch(tuning, self.settings.model.load_model)
            if why:
                raise ConfigError(f"the checkpoint to resume: {why}; set model.load_model to the base model "
                                  "it was trained on, or start a new run (a new run folder, no --resume)")
        # Lightning restores its loop counters after this hook, from this dict
        epoch_end_as_batch_end(checkpoint)
        if pos:
            self._resume = (pos["epoch"], pos["epoch_batches"])
            self._data_epoch, self._epoch_batches = self._resume
            self._tokens, self._trained = pos["tokens"], pos["trained_tokens"]
            self._rng_states = rng.from_checkpoint(pos)

    def on_train_start(self) -> None:
        if self.trainer.global_step > 0:  # resumed: that step is saved, do not save it again mid-accumulation
            note = mark_resumed_step_saved(self.trainer)
            if note:
                rank_zero_warn(note)
        states, self._rng_states = self._rng_states, None
        rng.split_for_rank(self.global_rank)  # a resume then restores each rank's saved stream over it
        if states:
            own, note = rng.pick(states, self.global_rank, self.trainer.world_size)
            if own is not None:
                rng.restore(own, self.device)
            if note:
                rank_zero_warn(note)
