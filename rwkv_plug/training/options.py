"""The ``model:`` and ``trainer:`` keys that ``rwkv-plug fit`` understands.

Every key of the seed configs and of the earlier trainer's ``model:``
section is either declared here or listed in :data:`MODEL_UNSUPPORTED` or
:data:`MODEL_FIXED` with the reason it is refused. ``trainer:`` also accepts every argument of
``lightning.Trainer`` (checked against its signature).
"""

from __future__ import annotations

from rwkv_plug.core.config import CONFIG_SECTIONS
from rwkv_plug.core.interfaces import Option

AUTO = -1

MODEL_OPTIONS: tuple[Option, ...] = (
    Option("load_model", None, "Path of the .pth state dict to start from (required; make one with `rwkv-plug init-model`)."),
    Option("ctx_len", 2048, "Chunk length: samples are cut into chunks of this many tokens, state carried between them."),
    Option("lr_init", None, "Initial learning rate (required)."),
    Option("lr_final", AUTO, "Final learning rate of the decay schedule; -1 means lr_init (constant)."),
    Option("lr_period", AUTO, "Length of the decay, in lr_period_type units; -1 means the whole run."),
    Option("lr_period_type", "epoch", "Unit of lr_period: 'epoch' or 'step' (optimizer steps)."),
    Option("lr_type", "cosine", "Decay shape: 'cosine' or 'linear'; both stay at lr_final after the period."),
    Option("warmup_steps", AUTO, "If > 0: LR rises linearly from 0.2*lr_init to lr_init over this many steps, then stays; refused together with lr_period > 0."),
    Option("beta1", 0.9, "Adam beta1."),
    Option("beta2", 0.99, "Adam beta2."),
    Option("adam_eps", 1e-8, "Adam epsilon."),
    Option("weight_decay", 0.001, "AdamW weight decay on >=2-D weight matrices (0 = Adam, no decay)."),
    Option("layerwise_lr", True, "Per-architecture LR multipliers: rwkv5 time_decay, rwkv7 att.w0 at 2x, the rest "
           "at 1x (docs/training.md#optimizer-groups-per-architecture); false: all at 1x."),
    Option("grad_cp", False, "Activation checkpointing per block (less memory per chunk, ~30% more compute)."),
    Option("dropout", 0.0, "Dropout on the embedding and residual sums."),
    Option("bptt_learning", True, "Backprop across chunks with the memory-bounded engine; false = one plain autograd graph."),
    Option("bptt_learning_range", AUTO, "If > 0: only the last N chunks' losses are trained; -1 (or any value <= 0) = all chunks."),
    Option("bptt_truncated_learning", False, "Detach the state between chunks (truncated BPTT); false = exact gradients."),
    Option("kernel", "auto", "WKV kernel: auto, torch, triton, cuda or a plugin's kernel name."),
    Option("wkv_precision", "auto", "How the WKV kernel's fp32 matrix products run: 'fp32' (exact IEEE fp32), "
           "'tf32' (TF32 tensor cores where the GPU has them) or 'auto' (tf32 for bf16/fp16 models, fp32 "
           "otherwise); fp64 models compute in fp64 (docs/kernels.md#precision)."),
    Option("n_embd", AUTO, "Model width; -1 = read from the checkpoint (given values are checked against it)."),
    Option("n_layer", AUTO, "Number of blocks; -1 = read from the checkpoint."),
    Option("vocab_size", AUTO, "Vocabulary rows; -1 = read from the checkpoint."),
    Option("dim_att", AUTO, "Attention width; -1 = read from the checkpoint."),
    Option("dim_ffn", AUTO, "FFN width; -1 = read from the checkpoint."),
    Option("substep_cuda_cache_clear", False, "Empty the CUDA cache after every training step."),
    Option("substep_logging", False, "Print a newline after every step so progress lines are kept."),
    Option("torch_set_float32_matmul_precision", "high", "'highest', 'high' or 'medium', passed to torch.set_float32_matmul_precision; null leaves torch's setting."),
    Option("consolidated_logging", True, "Average the logged loss and token counts over all ranks."),
    Option("sample_prompts", [], "Texts the model continues greedily while training (at each validation, or every "
           "sample_every_n_steps), shown on the console and written to samples.txt/samples.csv in the log folder "
           "and to TensorBoard; empty (the default): no samples, no cost.", escapes=True),
    Option("sample_every_n_steps", 0, "With sample_prompts: sample every this many optimizer steps; 0 = after "
           "each validation."),
    Option("sample_tokens", 32, "With sample_prompts: tokens generated per prompt."),
    Option("tuning", "full", "What trains: 'full' (every weight), 'state' (only a WKV start state per layer "
           "and head; weights frozen) or 'lora' (only peft LoRA adapters; weights frozen). See "
           "docs/training.md#tuning-modes.", choices=("full", "state", "lora")),
    Option("state_file", None, "tuning: state: start from this state file (written by `rwkv-plug export`); "
           "null starts from zeros.", type="str | None"),
    Option("lora_r", 32, "tuning: lora: the adapters' rank r."),
    Option("lora_alpha", 32, "tuning: lora: the adapters' alpha (the update is scaled by alpha / r)."),
    Option("lora_dropout", 0.0, "tuning: lora: dropout on the adapters' input."),
    Option("lora_target_modules", None, "tuning: lora: the linear layers to adapt, by name or dotted suffix "
           "(e.g. [key, value, att.output]); null: every linear projection of the blocks.", type="list[str] | None"),
    Option("lora_adapter", None, "tuning: lora: start from this adapter folder (peft format, written by "
           "`rwkv-plug export`); its rank, alpha, dropout and targets are used.", type="str | None"),
    Option("lora_options", {}, "tuning: lora: further peft LoraConfig fields, e.g. {use_dora: true} or "
           "{use_rslora: true}, passed as given."),
)

#: Keys of the earlier trainer that are refused, with the reason. A key set
#: to its no-op value (see :data:`MODEL_NOOP`) is accepted silently.
MODEL_UNSUPPORTED: dict[str, str] = {
    "position_loss_bias": "the earlier trainer accepted it but never applied it; remove the key",
    "position_loss_bias_in_validation": "the earlier trainer accepted it but never applied it; remove the key",
    "token_loss_threshold": "selective loss is not implemented; remove the key or set it to 0",
    "token_dropout_rate": "selective loss is not implemented; remove the key or set it to 0",
    "ctx_len_cutoffs": "the context-length cutoff schedule is not implemented; remove the key",
    "ctx_len_warmup_steps": "the context-length cutoff schedule is not implemented; remove the key",
}

#: Keys of the earlier trainer whose value the architecture fixes: accepted at that
#: value (see :data:`MODEL_NOOP`), refused with the reason otherwise.
MODEL_FIXED: dict[str, str] = {
    "head_size": "RWKV-v5 has a head size of 64 (n_embd / 64 heads); set 64 or remove the key",
}

MODEL_NOOP: dict[str, object] = {
    "position_loss_bias": 1.0,
    "position_loss_bias_in_validation": False,
    "token_loss_threshold": 0.0,
    "token_dropout_rate": 0.0,
    "ctx_len_cutoffs": [],
    "ctx_len_warmup_steps": [],
    "head_size": 64,
}

#: ``trainer:`` keys added on top of lightning.Trainer's arguments.
TRAINER_OPTIONS: tuple[Option, ...] = (
    Option("microbatch_size", 1, "Samples per device per forward/backward (DataLoader batch size)."),
    Option("target_batch_size", AUTO, "If > 0: accumulate_grad_batches = max(1, target // (num_nodes * devices * microbatch_size))."),
    Option("checkpoint", None, "ModelCheckpoint settings (dirpath, every_n_train_steps, save_top_k, save_last, ...); dirpath defaults to <default_root_dir>/checkpoints; by default only the newest checkpoint and last.ckpt are kept (docs/config.md)."),
)

#: ``trainer.checkpoint`` defaults that differ from ModelCheckpoint's own: ``last.ckpt`` plus
#: the newest checkpoint only (keeping every one filled the disk on long runs; -1 keeps them all).
CHECKPOINT_DEFAULTS: dict[str, object] = {
    "save_last": True,
    "save_top_k": 1,
}

#: lightning.Trainer arguments we set ourselves, with why.
TRAINER_FIXED: dict[str, str] = {
    "use_distributed_sampler": "rwkv-plug shards the data per rank itself (resumable sampler); remove the key",
}

#: Defaults that differ from lightning.Trainer's own.
TRAINER_DEFAULTS: dict[str, object] = {
    "accelerator": "auto",  # cpu when no GPU is present
    "devices": "auto",
    "num_nodes": 1,
    "strategy": "auto",
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "enable_model_summary": False,  # fit prints one line about the model instead
}

#: ``trainer.logger`` names: class path, the packages it can use (any one), the extra that installs one.
LOGGERS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "csv": ("lightning.pytorch.loggers.CSVLogger", (), None),
    "tensorboard": ("lightning.pytorch.loggers.TensorBoardLogger", ("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": ("lightning.pytorch.loggers.WandbLogger", ("wandb",), "wandb"),
}

#: The config's top-level sections (defined in core: preload and inspect check them too).
TOP_LEVEL = CONFIG_SECTIONS
