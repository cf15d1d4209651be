"""Samples while training: the model greedily continues a few prompts as it learns.

Set ``model.sample_prompts`` (a list of texts) to turn it on; it is off by default
and then adds nothing to the run (no callback, no tokenizer). At each validation
(``model.sample_every_n_steps: 0``, the default) or every N optimizer steps, the
first process continues each prompt for ``model.sample_tokens`` tokens, greedily,
with the state carried chunk by chunk (``ctx_len``), and writes the texts to the
console, to ``samples.txt`` and ``samples.csv`` in the run's log folder (each
rewritten atomically) and, with a TensorBoard logger, as TensorBoard text.
"""

from __future__ import annotations

import csv
import io
import sys
from typing import Any

from lightning.pytorch.callbacks import Callback

from rwkv_plug.core.errors import TrainingError
from rwkv_plug.training.model_config import ModelConfig


def sample_callbacks(model: ModelConfig, data: dict[str, Any]) -> list:
    """The callback that writes samples, when ``model.sample_prompts`` has any; else nothing."""
    if not model.sample_prompts:
        return []
    return [TrainingSamples(list(model.sample_prompts), model.sample_tokens, model.sample_every_n_steps, data,
                            model.ctx_len)]


class TrainingSamples(Callback):
    """Greedy continuations of ``prompts`` at each validation (``every == 0``) or every ``every`` steps."""

    def __init__(self, prompts: list[str], tokens: int, every: int, data: dict[str, Any], ctx_len: int) -> None:
        self.prompts, self.tokens, self.every = prompts, tokens, every
        self.data, self.ctx_len = data, ctx_len
        self._tok: Any = None
        self._ids: list[list[int]] = []
        self._last_step = -1
        self._rows: list[tuple[int, str, str]] = []  # (step, prompt, continuation) written so far

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not trainer.is_global_zero or self._tok is not None:
            return
        from rwkv_plug.data.options import as_data_config
        from rwkv_plug.data.tokenizer import load_tokenizer

        data = as_data_config(self.data)
        self._tok = load_tokenizer(data.tokenizer, data)
        self._ids = [self._tok.encode(p) for p in self.prompts]
        empty = [p for p, ids in zip(self.prompts, self._ids) if not ids]
        if empty:
            raise TrainingError(f"model.sample_prompts: {empty[0]!r} encodes to no tokens with tokenizer "
                                f"'{data.tokenizer}'; give some text")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0 and step != self._last_step:
            self._sample(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.every == 0 and not trainer.sanity_checking:
            self._sample(trainer, pl_module)

    def _sample(self, trainer, pl_module) -> None:
        self._last_step = step = trainer.global_step
        if not trainer.is_global_zero:
            return
        import torch

        from rwkv_plug.models.sampling import generate

        model = pl_module.model  # the bare RWKV module: no DDP hook runs, the other ranks wait at their next step
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                outs = [generate(model, ids, self.tokens, temperature=0.0, chunk_len=self.ctx_len)
                        for ids in self._ids]
        finally:
            model.train(was_training)
        new = [(step, prompt, self._decode(out)) for prompt, out in zip(self.prompts, outs)]
        self._rows.extend(new)
        self._write(trainer, new)

    def _decode(self, ids: list[int]) -> str:
        try:
            return self._tok.decode(ids)
        except Exception:  # an id past the tokenizer's vocabulary (padding rows): show the ids
            return " ".join(f"<{i}>" for i in ids)

    def _write(self, trainer, new: list[tuple[int, str, str]]) -> None:
        from pathlib import Path

        from tqdm.auto import tqdm

        from rwkv_plug.core.atomic import atomic_write
        from rwkv_plug.training.runlogs import run_log_dir

        for step, prompt, text in new:
            tqdm.write(f"step {step} sample: {prompt!r} -> {text!r}", file=sys.stderr)
        folder = Path(run_log_dir(trainer, Path(trainer.default_root_dir)))
        blocks = []
        for step, prompt, text in self._rows:
            blocks.append(f"--- step {step} ---\n{prompt}{text}\n")
        body = "\n".join(blocks).encode()
        atomic_write(folder / "samples.txt", lambda f: f.write(body))
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["step", "prompt", "sample"])
        writer.writerows(self._rows)
        data = table.getvalue().encode()
        atomic_write(folder / "samples.csv", lambda f: f.write(data))
        from lightning.pytorch.loggers import TensorBoardLogger

        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                for i, (step, prompt, text) in enumerate(new):
                    # markdown: keep the text as typed
                    lg.experiment.add_text(f"samples/{i}", f"    {prompt}{text}".replace("\n", "\n    "), step)
