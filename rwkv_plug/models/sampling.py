"""Text generation: prompt feeding with carried state, and token sampling.

Sampling follows the earlier trainer's SimpleRWKV: temperature 0 is greedy
argmax; otherwise softmax, keep the tokens whose probability reaches the
top-p cutoff, raise to the power 1/temperature, then draw one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def sample_logits(
    logits: Tensor, temperature: float = 1.0, top_p: float = 0.7, generator: torch.Generator | None = None
) -> int:
    """Pick one token id from a (V,) logits vector."""
    logits = logits.float().nan_to_num(nan=float("-inf"))
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs = torch.sort(probs, descending=True).values
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # cutoff: probability of the first sorted token whose cumulative mass exceeds top_p
        first = int(torch.searchsorted(cumulative, torch.tensor([top_p]), right=True)[0])
        cutoff = sorted_probs[min(first, sorted_probs.numel() - 1)]
        probs = torch.where(probs < cutoff, torch.zeros_like(probs), probs)
    if temperature != 1.0:
        probs = probs.pow(1.0 / temperature)
    return int(torch.multinomial(probs, 1, generator=generator)[0])


@torch.no_grad()
def feed(model: nn.Module, ids: Sequence[int], state=None, chunk_len: int = 512):
    """Run ``ids`` through ``model`` in chunks of ``chunk_len``; return (last logits (V,), state)."""
    if not ids:
        raise ValueError("feed needs at least one token")
    device = next(model.parameters()).device
    logits = None
    for start in range(0, len(ids), max(1, chunk_len)):
        chunk = torch.tensor([list(ids[start : start + chunk_len])], dtype=torch.long, device=device)
        out, state = model(chunk, state)
        logits = out[0, -1]
    return logits, state


class StreamDecoder:
    """Turns a stream of ids into text pieces, holding back partial UTF-8 characters."""

    #: Give up waiting for a character to complete after this many tokens.
    MAX_PENDING = 8

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.pending: list[int] = []

    def _try(self) -> str | None:
        try:
            return self.decode(self.pending)
        except (UnicodeDecodeError, ValueError):
            return None

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self._try()
        if (text is None or text.endswith("\ufffd")) and len(self.pending) < self.MAX_PENDING:
            return ""  # maybe the middle of a multi-byte character
        return self.flush(text)

    def flush(self, text: str | None = None) -> str:
        if not self.pending:
            return ""
        text = self._try() if text is None else text
        if text is None:  # still undecodable: show replacement characters, keep going
            text = "\ufffd" * len(self.pending)
        self.pending = []
        return text


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_tokens: int = 100,
    temperature: float = 1.0,
    top_p: float = 0.7,
    seed: int | None = None,
    chunk_len: int = 512,
    on_token: Callable[[int], None] | None = None,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """Feed the prompt, then sample up to ``max_tokens`` ids (each passed to ``on_token``)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    logits, state = feed(model, prompt_ids, None, chunk_len)
    out: list[int] = []
    for _ in range(max_tokens):
        token = sample_logits(logits.cpu(), temperature, top_p, generator)
        if token in stop_ids:
            break
        out.append(token)
        if on_token is not None:
            on_token(token)
        logits, state = feed(model, [token], state, chunk_len)
    return out
