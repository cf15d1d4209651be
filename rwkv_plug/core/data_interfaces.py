"""The interfaces of the data side: what a strategy and a tokenizer implement, and what they return.

:class:`Strategy` turns a dataset row into a :class:`Sample` (or raises
:class:`BadRow`); :class:`Tokenizer` turns text into ids. Each also has
optional fast paths with defaults (batches as :class:`FlatSamples`, numpy
arrays instead of Python lists), which the dataset build uses when they are
declared. Re-exported by :mod:`rwkv_plug.core.interfaces` and :mod:`rwkv_plug`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from rwkv_plug.core.interfaces import Option


@dataclass
class Sample:
    """One tokenized training sample.

    ``loss_mask`` is target-aligned: ``loss_mask[j] == 1`` means token ``j``
    is learned as the prediction from tokens ``0..j-1``. ``loss_mask[0]``
    is therefore never used by the loss.
    """

    input_ids: list[int]
    loss_mask: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError("input_ids and loss_mask differ in length")

    def __len__(self) -> int:
        return len(self.input_ids)

    def extend(self, ids: Sequence[int], learn: bool) -> None:
        self.input_ids.extend(ids)
        self.loss_mask.extend([1 if learn else 0] * len(ids))


class BadRow(Exception):
    """Raised by ``Strategy.encode`` for a row that must be skipped.

    The pipeline counts it (with the row number) instead of crashing.
    """


@dataclass
class FlatSamples:
    """A batch of samples back to back: what a strategy's optional fast paths return.

    Row i is ``ids[offsets[i]:offsets[i + 1]]`` with its mask
    ``mask[offsets[i]:offsets[i + 1]]``; a row in ``bad`` has no tokens and is
    skipped with that reason. It holds the same samples as ``encode_batch``
    would give, as arrays, so the pipeline makes no Python object per token.
    """

    ids: Any  #: np.ndarray, int32
    offsets: Any  #: np.ndarray, int64, one more than the rows
    mask: Any = None  #: np.ndarray, int8, or None: every token is learned
    bad: dict[int, BadRow] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, results: Sequence["Sample | BadRow"]) -> "FlatSamples":
        """``encode_batch``'s results as one flat batch."""
        import numpy as np

        lengths = [0 if isinstance(r, BadRow) else len(r) for r in results]
        offsets = np.zeros(len(results) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        samples = [r for r in results if not isinstance(r, BadRow)]
        ids = np.fromiter((t for s in samples for t in s.input_ids), dtype=np.int32, count=int(offsets[-1]))
        mask = np.fromiter((m for s in samples for m in s.loss_mask), dtype=np.int8, count=int(offsets[-1]))
        return cls(ids, offsets, mask, {i: r for i, r in enumerate(results) if isinstance(r, BadRow)})


class Tokenizer(ABC):
    """Turns text into token ids and back."""

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    @abstractmethod
    def load(cls, spec: str, options: Mapping[str, Any]) -> "Tokenizer":
        """Build the tokenizer; ``spec`` is the user's ``data.tokenizer`` value."""

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        """Problems with this tokenizer's ``data:`` options that their types cannot show
        (rules across keys), found when the config is read; none by default."""
        return []

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Rows the model's embedding needs (neox 50277, world 65536)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    # -- optional fast paths: each has a default that works for every tokenizer --------------
    #: Threads one ``encode_batch``/``encode_flat`` call runs on, for a tokenizer that runs its own
    #: (the built-in ``world``); None for one that does not. The dataset build tokenises in one
    #: process on a copy set to ``data.num_proc`` (:meth:`with_threads`) when the strategy has a
    #: flat fast path, and 1 per worker process otherwise.
    threads: int | None = None
    #: Whether :meth:`encode_spans` reads the bytes itself (no ``str`` per text). Only then does
    #: the pipeline hand a strategy Arrow columns (``Strategy.encode_arrow``) to tokenise.
    reads_spans: ClassVar[bool] = False

    def with_threads(self, threads: int) -> "Tokenizer":
        """This tokenizer set to encode on ``threads`` threads: itself when ``threads`` is None
        (it runs none) or already that, else a shallow copy (loaded tokenizers are shared)."""
        if self.threads is None or self.threads == threads:
            return self
        import copy

        own = copy.copy(self)
        own.threads = threads
        return own

    def encode_flat(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """``encode_batch`` as two numpy arrays, ``(ids int32, offsets int64)``: text i is
        ``ids[offsets[i]:offsets[i + 1]]``. The default flattens ``encode_batch``; override
        it to build the arrays without a Python int per token."""
        import numpy as np

        lists = self.encode_batch(texts) if len(texts) else []
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=offsets[1:])
        ids = np.fromiter((t for x in lists for t in x), dtype=np.int32, count=int(offsets[-1]))
        return ids, offsets

    def encode_spans(self, data: Any, starts: Any, lens: Any) -> tuple[Any, Any]:
        """``encode_flat`` of the UTF-8 texts ``data[starts[i]:starts[i] + lens[i]]`` of one
        buffer (an Arrow string column's bytes); ``starts``/``lens`` are int64 arrays. The
        default makes a ``str`` per text; a tokenizer that reads the bytes sets ``reads_spans``."""
        view = memoryview(data).cast("B")
        return self.encode_flat([str(view[s:s + n], "utf-8") for s, n in zip(starts.tolist(), lens.tolist())])

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def fingerprint(self) -> str:
        """A stable hash of the vocab and settings, for dataset caches."""


class Strategy(ABC):
    """Turns one dataset row into a :class:`Sample`."""

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    #: Lower is tried first when the strategy is auto-detected.
    detect_priority: ClassVar[int] = 100

    def __init__(self, options: Mapping[str, Any], tokenizer: Tokenizer) -> None:
        self.opts = dict(options)
        self.tokenizer = tokenizer

    @classmethod
    def matches(cls, columns: Sequence[str], options: Mapping[str, Any]) -> bool:
        """Whether this strategy can be auto-picked for a dataset with ``columns``.

        A strategy that overrides it and describes its columns in ``expects``
        is also held to it when forced with ``data.strategy``; one that keeps
        this default (or returns "" from ``expects``) is never auto-picked and
        never checked.
        """
        return False

    @classmethod
    def expects(cls, options: Mapping[str, Any]) -> str:
        """The columns needed, as a verb phrase ("needs prompt and completion"), for errors
        when no strategy fits the columns or a forced one does not."""
        return ""

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        """Problems with this strategy's ``data:`` options that their types cannot show (a
        list that must match another's length), found when the config is read, whichever
        strategy the data will pick; none by default. Only look at your own keys."""
        return []

    @classmethod
    def priority(cls, options: Mapping[str, Any]) -> int:
        """Detection order under these options (lower first); ``detect_priority`` by default.

        Override when an option the user set means "pick me first", as
        ``custom_text_key`` does for the ``text`` strategy.
        """
        return cls.detect_priority

    @abstractmethod
    def encode(self, row: Mapping[str, Any]) -> Sample:
        """Encode one row; raise :class:`BadRow` to skip it with a reason."""

    def encode_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Sample | BadRow]:
        """Encode many rows; a strategy may override this to batch the tokenizer."""
        out: list[Sample | BadRow] = []
        for row in rows:
            try:
                out.append(self.encode(row))
            except BadRow as exc:
                out.append(exc)
        return out

    # -- optional fast paths: the pipeline uses those that fast_paths() names --------------
    def fast_paths(self) -> frozenset[str]:
        """The fast paths this instance implements: ``"flat"`` (:meth:`encode_flat`) and
        ``"arrow"`` (:meth:`encode_arrow`, used only with ``"flat"`` and a tokenizer whose
        ``reads_spans`` is true). None by default: the pipeline calls :meth:`encode_batch`.

        Each must give exactly what ``encode_batch`` gives. A subclass that changes how rows
        are read should return none of them unless it implements them too.
        """
        return frozenset()

    def encode_flat(self, rows: Sequence[Mapping[str, Any]]) -> FlatSamples | None:
        """``encode_batch(rows)`` as one :class:`FlatSamples`, or None to decline this batch (the
        pipeline then calls ``encode_batch``). If it raises (other than ``BadRow``/``DataError``),
        the pipeline says so once and encodes the batch with ``encode_batch``."""
        return None

    def encode_arrow(self, table: Any) -> FlatSamples | None:
        """:meth:`encode_flat` of a ``pyarrow.Table``'s rows, read from its buffers (no Python
        object per cell), or None to decline this table (the rows then go to ``encode_flat``)."""
        return None
