"""Any Hugging Face tokenizer, by hub name (``org/name``) or local folder.

Loaded with ``AutoTokenizer.from_pretrained``. Remote code stays off unless
the user sets ``tokenizer_trust_remote_code: true``. As in the reference
trainer, text is encoded the way the tokenizer does by default, so one that
adds BOS/EOS adds them to every separately encoded piece.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rwkv_plug.core.errors import TokenizerError
from rwkv_plug.core.interfaces import Option, Tokenizer

_AUTO_KEYS = ("kwargs", "props")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TokenizerError(f"data.{key} must be a mapping, got {type(value).__name__}")
    return dict(value)


def resolve_hf_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """``(from_pretrained kwargs, attributes to set, trust_remote_code)`` from ``data:`` options."""
    kwargs = _mapping(options.get("tokenizer_kwargs"), "tokenizer_kwargs")
    auto = _mapping(options.get("autoTokenizer"), "autoTokenizer")
    unknown = sorted(set(auto) - set(_AUTO_KEYS))
    if unknown:
        raise TokenizerError(
            f"data.autoTokenizer has unknown key(s) {', '.join(unknown)}; it takes 'kwargs' "
            "(passed to from_pretrained) and 'props' (attributes set afterwards)"
        )
    auto_kwargs = _mapping(auto.get("kwargs"), "autoTokenizer.kwargs")
    clash = sorted(set(auto_kwargs) & set(kwargs))
    if clash:
        raise TokenizerError(
            f"{', '.join(clash)} set in both data.tokenizer_kwargs and data.autoTokenizer.kwargs; keep one"
        )
    kwargs = {**auto_kwargs, **kwargs}
    if "trust_remote_code" in kwargs:
        raise TokenizerError(
            "set data.tokenizer_trust_remote_code: true instead of trust_remote_code in the "
            "tokenizer kwargs (it runs code from the tokenizer's repository)"
        )
    trust = options.get("tokenizer_trust_remote_code", False)
    if not isinstance(trust, bool):
        raise TokenizerError(f"data.tokenizer_trust_remote_code must be true or false, got {trust!r}")
    return kwargs, _mapping(auto.get("props"), "autoTokenizer.props"), trust


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer: write its hub name (org/name) or local folder as data.tokenizer."""

    name = "hf"
    options = (
        Option("tokenizer_kwargs", None, "HF tokenizers: a mapping of extra keyword arguments for "
                                         "`AutoTokenizer.from_pretrained` (for example `{use_fast: false}` or "
                                         "`{revision: main}`).",
               type=dict),
        Option(
            "autoTokenizer",
            None,
            "HF tokenizers, the reference trainer's form: `{kwargs: {...}, props: {...}}`. `kwargs` go to "
            "`from_pretrained`, `props` are set as attributes on the loaded tokenizer. Either sub-key may be "
            "left out (the reference required both); any other sub-key is an error. A kwarg set both here and "
            "in `tokenizer_kwargs` is an error.",
            type=dict,
        ),
        Option(
            "tokenizer_trust_remote_code",
            False,
            "HF tokenizers: allow running Python code from the tokenizer's repository. Off unless you set it; "
            "`trust_remote_code` inside the kwargs is rejected with a pointer to this key.",
        ),
    )

    def __init__(self, spec: str, tokenizer: Any, kwargs: Mapping[str, Any], props: Mapping[str, Any]) -> None:
        self.spec = spec
        self.kwargs = dict(kwargs)
        self.props = dict(props)
        self._tok = tokenizer
        self._fingerprint: str | None = None

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        try:
            resolve_hf_options(options)
        except TokenizerError as exc:
            return [str(exc)]
        return []

    @classmethod
    def load(cls, spec: str, options: Mapping[str, Any]) -> "HFTokenizer":
        if spec == cls.name:
            raise TokenizerError(
                "data.tokenizer: hf needs the tokenizer itself: write its hub name "
                "(e.g. tokenizer: org/name) or a local folder as data.tokenizer"
            )
        kwargs, props, trust = resolve_hf_options(options)
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust, **kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not trust and ("trust_remote_code" in str(exc) or "custom code" in str(exc)):
                raise TokenizerError(
                    f"the Hugging Face tokenizer '{spec}' needs its own Python code to load. If you trust "
                    "it, set data.tokenizer_trust_remote_code: true (this runs the code in that folder "
                    "or hub repo on this machine); otherwise use another tokenizer"
                ) from None
            raise TokenizerError(
                f"cannot load the Hugging Face tokenizer '{spec}': {first.rstrip('.')}. Check the name or path; "
                "a hub tokenizer must be downloaded once while online (it is then read from the "
                "HF cache), or give a local folder holding its tokenizer files"
            ) from None
        for attr, value in props.items():
            try:
                setattr(tok, attr, value)
            except Exception as exc:
                raise TokenizerError(f"data.autoTokenizer.props.{attr}: cannot set it: {exc}") from None
        return cls(spec, tok, kwargs, props)

    @property
    def hf(self) -> Any:
        """The wrapped ``transformers`` tokenizer (the ``messages`` strategy uses its chat template)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, verbose=False)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self._tok(list(texts), verbose=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            backend = getattr(self._tok, "backend_tokenizer", None)
            content = backend.to_str() if backend is not None else json.dumps(sorted(self._tok.get_vocab().items()))
            meta = json.dumps(
                [type(self._tok).__name__, self.kwargs, self.props, self._tok.all_special_tokens,
                 getattr(self._tok, "chat_template", None)],  # a template change changes chat samples
                sort_keys=True,
                default=repr,
            )
            self._fingerprint = "hf-" + hashlib.sha256((content + meta).encode("utf-8")).hexdigest()[:16]
        return self._fingerprint

    def __repr__(self) -> str:
        return f"HFTokenizer({self.spec!r})"
