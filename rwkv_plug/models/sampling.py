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
        # the built-in models can run the head on the last position only
        out, state = model(chunk, state, head="last") if getattr(model, "head_modes", False) else model(chunk, state)
        logits = out[0, -1]
    return logits, state


class StreamDecoder:
    """Streams the text of a growing list of ids exactly as the tokenizer decodes it.

    Each :meth:`push` returns the new end of ``decode(context + ids so far)``,
    so what was printed always equals the tokenizer's own decode: word-level
    tokenizers that put a space between tokens get their spaces, the first
    generated token is decoded next to the prompt (``context``), and a
    character cut between byte tokens (a trailing U+FFFD, or a decode error)
    waits for the ids that complete it, at most ``MAX_PENDING`` of them.
    An id that decodes to nothing, or that the tokenizer cannot decode at
    all, prints nothing; ``on_silent`` is told so once, with the id.
    Only the last ``WINDOW`` ids are decoded each step (older ones are
    dropped, keeping ``KEEP`` as context), so a long run stays linear.
    """

    #: Give up waiting for a character to complete after this many tokens.
    MAX_PENDING = 8
    WINDOW = 1024
    KEEP = 64

    def __init__(self, decode: Callable[[list[int]], str], context: Sequence[int] = (),
                 on_silent: Callable[[str], None] | None = None) -> None:
        self.decode = decode
        self.on_silent = on_silent
        self.ids: list[int] = list(context)[-self.KEEP:]
        self.shown = (self._text(self.ids) or "") if self.ids else ""  # decode(ids), already printed
        self.pending = 0  # ids whose text is held back
        self.silent_said = False

    def _text(self, ids: list[int]) -> str | None:
        try:
            return self.decode(ids)
        except Exception:  # a cut character (strict UTF-8) or an id the tokenizer lacks; see push
            return None

    def _silent(self, token: int, why: str) -> None:
        if not self.silent_said and self.on_silent is not None:
            self.silent_said = True
            self.on_silent(f"note: token id {token} {why} with this tokenizer, so it prints nothing "
                           "(said once; the model still sees every id)")

    def push(self, token: int) -> str:
        ids = self.ids + [token]
        text = self._text(ids)
        if text is None and self._text([token]) is None:
            self._silent(token, "cannot be decoded")
            return ""  # left out of the text: every later decode would fail with it
        self.ids = ids
        if text is None or text.endswith("\ufffd"):
            self.pending += 1
            if self.pending < self.MAX_PENDING:
                return ""  # maybe the middle of a multi-byte character
        elif text == self.shown and not self.pending:
            self._silent(token, "decodes to no text")
        return self._emit(text)

    def flush(self) -> str:
        """The text still held back (an unfinished character shows as U+FFFD)."""
        if not self.pending:
            return ""
        return self._emit(self._text(self.ids))

    def _emit(self, text: str | None) -> str:
        self.pending = 0
        if text is None:  # still undecodable: show a replacement character, start afresh
            self.ids, self.shown = [], ""
            return "\ufffd"
        # decode(ids) extends what was shown; should a tokenizer rewrite the end
        # (e.g. space clean-up), what was printed stays and only the longer part follows
        new = text[len(self.shown):]
        self.shown = text
        if len(self.ids) > self.WINDOW:
            kept = self.ids[-self.KEEP:]
            kept_text = self._text(kept)
            if kept_text is not None:
                self.ids, self.shown = kept, kept_text
        return new


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
