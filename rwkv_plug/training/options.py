"""The ``model:`` and ``trainer:`` keys that ``rwkv-plug fit`` understands.

Every key of the seed configs and of the earlier trainer's ``model:``
section is either declared here (:data:`MODEL_OPTIONS`) or in :data:`MODEL_LEGACY`
with the reason it is refused. ``trainer:`` also accepts every argument of
``lightning.Trainer`` (checked against its signature).
"""

from __future__ import annotations

from rwkv_plug.core.config import CONFIG_SECTIONS
from rwkv_plug.core.interfaces import Legacy, Option
from rwkv_plug.training.recompute_schedule import DEFAULT_KEPT_STATES

AUTO = -1


def _layer_names(value: list) -> str | None:
    return None if value and all(name.strip() for name in value) else "a non-empty list of layer names"


def _texts(value: list) -> str | None:
    return None if all(value) else "non-empty texts"


def _kept_states(value) -> str | None:
    if value == "auto" or (type(value) is int and (value == -1 or value >= 1)):
        return None
    return "-1 (keep every chunk's start state), 1 or more, or auto (sized from the weights)"


#: The ``model:`` keys, each declared once: type (from the default unless given), default,
#: range or choices, and the help that docs/config.md shows (generated: ``make docs``).
#: Rules across keys live in :mod:`rwkv_plug.training.model_config`.
MODEL_OPTIONS: tuple[Option, ...] = (
    Option("load_model", None, "Path of the .pth state dict to start from (required; make one with `rwkv-plug "
           "init-model`). A relative path is looked up from the working directory, then from the config file's "
           "folder (data paths use the working directory only).", type=str, shown_default="required"),
    Option("ctx_len", 2048, "Chunk length: samples are cut into chunks of this many tokens, state carried "
           "between them.", minimum=1),
    Option("lr_init", None, "Initial learning rate (required).", type=float, minimum=0.0, shown_default="required"),
    Option("lr_final", AUTO, "Final learning rate of the decay schedule; -1 means lr_init (constant); other "
           "negatives are refused. Not used with `warmup_steps` (a warning says so).", type=float),
    Option("lr_period", AUTO, "Length of the decay, in lr_period_type units; -1 means the whole run."),
    Option("lr_period_type", "epoch", "Unit of lr_period: 'epoch' or 'step' (optimizer steps).",
           choices=("epoch", "step"), expects="'epoch' or 'step'"),
    Option("lr_type", "cosine", "Decay shape: 'cosine' or 'linear'; both stay at lr_final after the period.",
           choices=("cosine", "linear"), expects="'cosine' or 'linear'"),
    Option("warmup_steps", AUTO, "If > 0: LR rises linearly from 0.2*lr_init to lr_init over this many steps, "
           "then stays; refused together with lr_period > 0."),
    Option("beta1", 0.9, "Adam beta1.", minimum=0.0),
    Option("beta2", 0.99, "Adam beta2.", minimum=0.0),
    Option("adam_eps", 1e-8, "Adam epsilon.", minimum=0.0),
    Option("weight_decay", 0.001, "AdamW weight decay on >=2-D weight matrices (0 = Adam, no decay).", minimum=0.0),
    Option("layerwise_lr", True, "Per-architecture LR multipliers: rwkv5 time_decay, rwkv7 att.w0 at 2x, the rest "
           "at 1x (docs/training.md#optimizer-groups-per-architecture); false: all at 1x."),
    Option("grad_cp", False, "Activation checkpointing per block (less memory per chunk, ~30% more compute)."),
    Option("dropout", 0.0, "Dropout on the embedding and residual sums. Each rank draws its own masks (its "
           "stream is derived from `seed` and the rank).", minimum=0.0, below=1),
    Option("bptt_learning", True, "Backprop across chunks with the memory-bounded engine; false = one plain "
           "autograd graph."),
    Option("bptt_learning_range", AUTO, "If > 0: only the last N chunks' losses are trained; -1 (or any value "
           "<= 0) = all chunks."),
    Option("bptt_truncated_learning", False, "Detach the state between chunks (truncated BPTT); false = exact "
           "gradients."),
    Option("bptt_kept_states", DEFAULT_KEPT_STATES, "Chunk-start states exact BPTT keeps at once; a sample with "
           "more chunks runs some chunks again (no autograd) in its backward to rebuild the others, same "
           "gradients; -1 keeps every chunk's (memory grows with the sample); auto keeps as many as fit in 10% "
           "of the weights + their gradients and Adam moments, at least 64. See "
           "docs/training.md#bounded-memory-kept-states.", type=object, check=_kept_states),
    # = training.head_loss.DEFAULT_HEAD_CHUNK_TOKENS (that module imports torch; a test checks they agree)
    Option("head_chunk_tokens", 1024, "The head and the loss run over this many tokens at a time (of "
           "microbatch x ctx_len), so the full (tokens, vocab) logits and their gradient are never held; same "
           "loss and gradients; 0 = all at once (the earlier way). See docs/training.md#loss.", minimum=0),
    # its value is checked by the kernel-name check fit's kernel selection uses too (model_config)
    Option("kernel", "auto", "WKV kernel: auto, torch, triton, cuda or a plugin's kernel name.", type=object),
    # tests/training/test_train_config.py checks these are kernels.precision.WKV_PRECISIONS
    Option("wkv_precision", "auto", "How the WKV kernel's fp32 matrix products run: 'fp32' (exact IEEE fp32), "
           "'tf32' (TF32 tensor cores where the GPU has them) or 'auto' (tf32 for bf16/fp16 models, fp32 "
           "otherwise); fp64 models compute in fp64 (docs/kernels.md#precision).",
           choices=("auto", "fp32", "tf32"), expects="auto, fp32, tf32", suggest=True),
    Option("n_embd", AUTO, "Model width; -1 = read from the checkpoint (given values are checked against it)."),
    Option("n_layer", AUTO, "Number of blocks; -1 = read from the checkpoint."),
    Option("vocab_size", AUTO, "Vocabulary rows; -1 = read from the checkpoint."),
    Option("dim_att", AUTO, "Attention width; -1 = read from the checkpoint."),
    Option("dim_ffn", AUTO, "FFN width; -1 = read from the checkpoint."),
    Option("substep_cuda_cache_clear", False, "Empty the CUDA cache after every training step."),
    Option("substep_logging", False, "Print a newline after every step so progress lines are kept."),
    Option("torch_set_float32_matmul_precision", "high", "'highest', 'high' or 'medium', passed to "
           "torch.set_float32_matmul_precision; null leaves torch's setting.", type=str | None,
           choices=("highest", "high", "medium"), expects="highest, high, medium or null (leave torch's setting)",
           suggest=True),
    Option("consolidated_logging", True, "Average the logged loss and token counts over all ranks."),
    Option("sample_prompts", [], "Texts the model continues greedily while training (at each validation, or "
           "every `sample_every_n_steps`), shown on the console and written to `samples.txt`/`samples.csv` in the "
           "log folder and to TensorBoard; empty (the default): no samples, no cost "
           "([training.md](training.md#samples-while-training)). Text key: `'\\n'` escapes work.",
           escapes=True, type=list[str] | None, check=_texts,
           expects="a list of non-empty texts (e.g. ['Once upon a time'])"),
    Option("sample_every_n_steps", 0, "With `sample_prompts`: sample every this many optimizer steps; 0 = after "
           "each validation.", minimum=0, expects="an integer >= 0"),
    Option("sample_tokens", 32, "With `sample_prompts`: tokens generated per prompt.", minimum=1,
           expects="an integer >= 1"),
    Option("tuning", "full", "What trains: `full` (every weight), `state` (only a WKV start state per layer and "
           "head; every weight frozen) or `lora` (only peft LoRA adapters; every weight frozen). An architecture "
           "declares the modes it supports (rwkv5 and rwkv7: all three); another mode is an error naming the "
           "architecture. See [training.md](training.md#tuning-modes).",
           choices=("full", "state", "lora"), expects="full, state, lora", suggest=True),
    Option("state_file", None, "`tuning: state`: start from this state file (written by `rwkv-plug export`); "
           "null starts from zeros. Found like `load_model`.", type=str | None),
    Option("lora_r", 32, "`tuning: lora`: the adapters' rank r (≥ 1).", minimum=1),
    Option("lora_alpha", 32, "`tuning: lora`: the adapters' alpha; the update is scaled by alpha / r.",
           type=float, minimum=0.0),
    Option("lora_dropout", 0.0, "`tuning: lora`: dropout on the adapters' input, in [0, 1).", minimum=0.0, below=1),
    Option("lora_target_modules", None, "`tuning: lora`: the linear layers to adapt, by leaf name or dotted "
           "suffix (`[key, value, att.output, head]`); null: every linear projection of the blocks (rwkv5: att "
           "receptance/key/value/output/gate, ffn key/receptance/value; rwkv7: att receptance/key/value/output, "
           "ffn key/value). A name that matches no linear layer is an error listing the available ones.",
           type=list[str] | None, check=_layer_names,
           expects="a list of layer names (e.g. [key, value, output]) or null for every linear projection of "
                   "the blocks"),
    Option("lora_adapter", None, "`tuning: lora`: start from this adapter folder (peft format, written by "
           "`rwkv-plug export`); its rank, alpha, dropout and targets are used, and the `lora_*` keys above are "
           "ignored.", type=str | None),
    Option("lora_options", {}, "`tuning: lora`: further fields of peft's `LoraConfig`, passed as given (e.g. "
           "`{use_dora: true}`, `{use_rslora: true}`); a field peft refuses is an error.",
           expects="a mapping of peft LoraConfig fields (e.g. {use_dora: true})"),
)

_NEVER_APPLIED = "the earlier trainer accepted it but never applied it; remove the key"
_SELECTIVE = "selective loss is not implemented; remove the key or set it to 0"
_CUTOFFS = "the context-length cutoff schedule is not implemented; remove the key"

#: Keys of the earlier trainer's ``model:`` section that are refused, with the reason; each is
#: accepted (and does nothing) at its no-op value.
MODEL_LEGACY: tuple[Option, ...] = (
    Option("position_loss_bias", legacy=Legacy(_NEVER_APPLIED, noop=1.0)),
    Option("position_loss_bias_in_validation", legacy=Legacy(_NEVER_APPLIED, noop=False)),
    Option("token_loss_threshold", legacy=Legacy(_SELECTIVE, noop=0.0)),
    Option("token_dropout_rate", legacy=Legacy(_SELECTIVE, noop=0.0)),
    Option("ctx_len_cutoffs", legacy=Legacy(_CUTOFFS, noop=[])),
    Option("ctx_len_warmup_steps", legacy=Legacy(_CUTOFFS, noop=[])),
    Option("head_size", legacy=Legacy("RWKV-v5 has a head size of 64 (n_embd / 64 heads); set 64 or remove the key",
                                      noop=64, kind="fixed")),
)

#: ``trainer:`` keys added on top of lightning.Trainer's arguments.
TRAINER_OPTIONS: tuple[Option, ...] = (
    Option("microbatch_size", 1, "Samples per device per forward/backward (DataLoader batch size).", minimum=1),
    Option("target_batch_size", AUTO, "If > 0: accumulate_grad_batches = max(1, target // (num_nodes * devices * "
           "microbatch_size))."),
    # its value is checked against ModelCheckpoint's arguments (training/config.py)
    Option("checkpoint", None, "ModelCheckpoint settings (dirpath, every_n_train_steps, save_top_k, save_last, "
           "...); dirpath defaults to <default_root_dir>/checkpoints; by default only the newest checkpoint and "
           "last.ckpt are kept (table below).", type=object, shown_default="(see meaning)"),
)


class _LightningsOwn:
    def __repr__(self) -> str:
        return "LIGHTNINGS_OWN"


#: The default of a Lightning argument that rwkv-plug leaves to Lightning.
LIGHTNINGS_OWN: object = _LightningsOwn()

#: lightning.Trainer arguments rwkv-plug documents, with its defaults where they differ from
#: Lightning's (:func:`trainer_defaults`). Their values are checked against Lightning's own
#: type hints (training/lightning_args.py); every other Trainer argument passes through too.
TRAINER_LIGHTNING: tuple[Option, ...] = (
    Option("accumulate_grad_batches", LIGHTNINGS_OWN, "Lightning's; must not be > 1 together with "
           "`target_batch_size`.", shown_default="1"),
    Option("accelerator", "auto", "Lightning's; `auto` is `cpu` on a machine without a GPU (this is what makes the "
           "seed configs run on CPU as written)."),
    Option("devices", "auto", "Lightning's; for the accumulation formula `auto` counts CUDA devices (1 on CPU), a "
           "list counts its entries."),
    Option("num_nodes", 1, "Lightning's; machines taking part (the accumulation formula counts them).", minimum=1),
    Option("precision", LIGHTNINGS_OWN, "Use `bf16-mixed` on GPUs.", shown_default="Lightning's (`32-true`)"),
    Option("strategy", "auto", "`auto`, `ddp`, `ddp_spawn` (and other DDP variants); `fsdp2` (or `model_parallel`): "
           "parameters, gradients and optimizer state sharded over all ranks (FSDP2, CPU or CUDA); `fsdp` runs as "
           "`fsdp2` on CUDA and is an error on CPU; `deepspeed_stage_1`/`_2` (and `_offload`) need CUDA and the "
           "deepspeed package, stage 3 is refused (see training.md, Sharded training)."),
    Option("num_sanity_val_steps", 0, "No sanity validation by default (as the earlier trainer)."),
    Option("enable_model_summary", False, "Lightning's module table is off; `fit` prints one `model:` line (class, "
           "layers, width, vocab, parameters)."),
    Option("log_every_n_steps", 1, "Log every optimizer step."),
    Option("default_root_dir", LIGHTNINGS_OWN, "Run folder: checkpoints in `<it>/checkpoints`, logs in "
           "`<it>/logs/version_N` (`metrics.csv`, `tensorboard/`, `config.yaml`).",
           shown_default="`runs/<config file stem>`"),
    Option("logger", LIGHTNINGS_OWN, "Unset (or `true`): a CSV log and a TensorBoard log in the same "
           "`logs/version_N` folder (TensorBoard's in its `tensorboard/` subfolder; `tensorboard --logdir "
           "runs/cfg/logs`). Otherwise `csv`, `tensorboard`, `wandb`, `false`, a LightningCLI-style `{class_path, "
           "init_args}` mapping, or a list of these. `wandb` needs its package (`pip install \"rwkv-plug[wandb]\"`). "
           "`rwkv-plug report` reads the CSV log.", shown_default="CSV + TensorBoard"),
    Option("callbacks", LIGHTNINGS_OWN, "A list of `{class_path, init_args}` mappings. A `ModelCheckpoint` given "
           "here replaces the one built from `trainer.checkpoint` (setting both is an error); its folder is where "
           "`fit --resume auto` looks (below).", shown_default="none"),
    Option("max_steps", LIGHTNINGS_OWN, "Lightning's; optimizer steps to train (`-1`: no limit); `rwkv-plug plan` "
           "and the LR schedule count them.", shown_default="-1"),
    Option("max_epochs", LIGHTNINGS_OWN, "Lightning's; epochs to train (unset with `max_steps: -1`: 1000).",
           shown_default="Lightning's"),
    Option("limit_train_batches", LIGHTNINGS_OWN, "Lightning's; training batches per epoch, a count or a "
           "fraction of them (`rwkv-plug plan` and the resumable sampler count them).", shown_default="1.0"),
    Option("enable_checkpointing", LIGHTNINGS_OWN, "Lightning's; false: no `ModelCheckpoint` is added.",
           shown_default="true"),
    Option("enable_progress_bar", LIGHTNINGS_OWN, "Lightning's; false: no step progress bar.",
           shown_default="true"),
)

#: lightning.Trainer arguments rwkv-plug sets itself: refused, with why.
TRAINER_LEGACY: tuple[Option, ...] = (
    Option("use_distributed_sampler", legacy=Legacy("rwkv-plug shards the data per rank itself (resumable "
                                                    "sampler); remove the key", kind="ours")),
)


def trainer_defaults() -> dict[str, object]:
    """rwkv-plug's defaults for lightning.Trainer arguments, where they differ from Lightning's."""
    return {o.name: o.default for o in TRAINER_LIGHTNING if o.default is not LIGHTNINGS_OWN}


#: ``trainer.checkpoint`` keys rwkv-plug documents (any ``ModelCheckpoint`` argument is accepted),
#: with its defaults where they differ from ModelCheckpoint's own: ``last.ckpt`` plus the newest
#: checkpoint only (keeping every one filled the disk on long runs; -1 keeps them all).
CHECKPOINT_OPTIONS: tuple[Option, ...] = (
    Option("dirpath", LIGHTNINGS_OWN, "Where checkpoints go; `fit --resume auto` looks here and `fit` prints it "
           "at the end. One run per folder: a fresh run refuses a folder that holds an earlier run's `*.ckpt` "
           "([training.md](training.md#checkpoints-and-resume)).", shown_default="`<default_root_dir>/checkpoints`"),
    Option("save_last", True, "Also write `last.ckpt` each time a checkpoint is saved (`link`: a symbolic link "
           "instead of a copy)."),
    Option("save_top_k", 1, "How many `epoch=E-step=S.ckpt` files to keep: 1 = only the newest (older ones are "
           "deleted), -1 = every one, 0 = none (then `last.ckpt` is written only when training ends, or every N "
           "steps with `every_n_train_steps`). More than 1 needs a `monitor` (e.g. `monitor: step`, `mode: max` "
           "keeps the newest N)."),
    Option("every_n_train_steps", LIGHTNINGS_OWN, "Save every N optimizer steps (otherwise at each epoch end, which "
           "includes the end of training when `max_steps` stops it inside an epoch). With N set, steps after the "
           "last multiple of N are not saved; `fit` then ends with a `note:` saying which step the newest "
           "checkpoint holds.", shown_default="unset"),
)


def checkpoint_defaults() -> dict[str, object]:
    """rwkv-plug's ``trainer.checkpoint`` defaults that differ from ModelCheckpoint's (dirpath aside)."""
    return {o.name: o.default for o in CHECKPOINT_OPTIONS if o.default is not LIGHTNINGS_OWN}


#: ``trainer.logger`` names: class path, the packages it can use (any one), the extra that installs one.
LOGGERS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "csv": ("lightning.pytorch.loggers.CSVLogger", (), None),
    "tensorboard": ("lightning.pytorch.loggers.TensorBoardLogger", ("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": ("lightning.pytorch.loggers.WandbLogger", ("wandb",), "wandb"),
}

#: The config's top-level sections (defined in core: preload and inspect check them too).
TOP_LEVEL = CONFIG_SECTIONS

#: The one top-level key that is not a section.
SEED_OPTION = Option("seed_everything", 42, "Seed for Lightning/torch; `true` = 42, `false`/null = unseeded.",
                     type=int | bool | None, expects="an integer or true/false")
