"""Measure the peak memory of real training steps; run as a script in a fresh process.

    python memory_probe.py step L C V B T LENGTH [KEPT]  # sequence_loss + backward + fused Adam, as fit's step
                                                         # (KEPT: model.bptt_kept_states, default its default)
    python memory_probe.py fit CONFIG              # a real `fit` of CONFIG (its 2nd optimizer step)

Prints one JSON line. What is measured, and why it is honest: the estimate
in training/memory_plan.py is of live tensor bytes. On Linux, writing 5 to
/proc/self/clear_refs resets the process's peak resident size (VmHWM) to
the current one, so ``VmHWM - VmRSS before`` is the peak growth over the
measured code, exact to the page. (tracemalloc cannot see torch's
allocations, and ru_maxrss cannot be reset.) RSS follows live tensors only
if freed blocks go back to the system: glibc keeps freed heap blocks and
raises its mmap threshold as big blocks are freed, so the caller sets
MALLOC_MMAP_THRESHOLD_ (which also fixes the threshold) and
MALLOC_TRIM_THRESHOLD_: every block of 64 KiB or more is then its own
mapping, returned when freed. Blocks below that come from the heap, which
earlier work may have left with free space: that is why tiny models (a few
MiB in all) are not measured this way.
"""

from __future__ import annotations

import json
import re
import sys

import torch


def rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+) kB", f.read()).group(1)) * 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_step(L: int, C: int, V: int, B: int, T: int, length: int, kept: int | None = None) -> dict:
    from rwkv_plug.core import plugins
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss
    from rwkv_plug.training.optim import LrSchedule, build_optimizer

    arch = plugins.models().get("rwkv5")
    m = {"weight_decay": 0.0, "layerwise_lr": False, "beta1": 0.9, "beta2": 0.99, "adam_eps": 1e-8}

    def make(n_layer, n_embd, vocab):
        model = arch.from_state_dict(arch.init_state_dict(n_layer, n_embd, vocab), kernel="torch")
        opt, _ = build_optimizer(model, m, LrSchedule(1e-3, 1e-3, "cosine", 0, 10), arch)
        return model, opt

    def step(model, opt, ids, mask, ctx):  # what fit's training step and optimizer step do
        settings = BpttSettings(ctx_len=ctx) if kept is None else BpttSettings(ctx_len=ctx, kept_states=kept)
        sequence_loss(model, ids, mask, settings, train=True).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    g = torch.Generator().manual_seed(0)
    tiny, tiny_opt = make(1, 64, 16)  # first use of every lazily loaded library, before measuring
    for _ in range(2):
        step(tiny, tiny_opt, torch.randint(0, 16, (1, 40), generator=g), torch.ones(1, 40, dtype=torch.long), 16)
    del tiny, tiny_opt
    before = rss("VmRSS")
    reset_peak()
    model, opt = make(L, C, V)
    ids = torch.randint(0, V, (B, length), generator=g)
    mask = torch.ones(B, length, dtype=torch.long)
    step(model, opt, ids, mask, T)  # the first step creates Adam's moments
    step(model, opt, ids, mask, T)
    return {"peak": rss("VmHWM") - before}


def measure_fit(config: str) -> dict:
    """fit's own pipeline (trainer, model, data, module): the peak growth from the start of training
    (weights loaded, data and loggers set up) to the end of its 2nd optimizer step: Adam's moments,
    gradients and anything kept from step to step (the CPU's pooled gradient buffers) included."""
    import lightning as L

    from rwkv_plug.training.config import load_fit_config
    from rwkv_plug.training.fit import _training_module, build_trainer, load_training_model

    class Peak(L.Callback):
        def __init__(self) -> None:
            self.before = self.peak = None

        def on_train_start(self, trainer, module):
            self.before = rss("VmRSS")
            reset_peak()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 2 and self.peak is None:  # the 2nd step's optimizer update is done
                self.peak = rss("VmHWM") - self.before

    cfg = load_fit_config(config, overrides={"trainer.max_steps": 2})
    peak = Peak()
    trainer = build_trainer(cfg, extra_callbacks=[peak])
    module = _training_module(cfg, trainer, load_training_model(cfg.model), lambda msg: None)
    trainer.fit(module)
    return {"peak": peak.peak}


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "step":
        print(json.dumps(measure_step(*(int(a) for a in sys.argv[2:9]))))
    else:
        print(json.dumps(measure_fit(sys.argv[2])))
