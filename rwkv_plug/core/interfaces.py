"""The interfaces a plugin class implements, one per plugin kind.

A plugin class has a ``name``, a docstring whose first line ``rwkv-plug
list-*`` shows, and (for strategies and tokenizers) the ``data:`` options
it understands, declared as :class:`Option` so the config layer can
validate them with did-you-mean suggestions and check their values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

# the data side's interfaces live in their own module; importing them here keeps one place to import from
from rwkv_plug.core.data_interfaces import BadRow, FlatSamples, Sample, Strategy, Tokenizer  # noqa: F401


@dataclass(frozen=True)
class Option:
    """One config key a plugin owns.

    Attributes:
        name: the key as written in YAML.
        default: the value used when the key is absent.
        help: what the key does, as the key tables of ``docs/config.md`` show
            it (they are generated from it: ``make docs``).
        escapes: if true, string values (or lists of them) have backslash
            escapes such as ``'\\n'`` turned into real characters, so that
            single-quoted YAML behaves as users expect.
        aliases: other accepted spellings of the key.
        type: what a value must be: ``bool``, ``int``, ``float`` (ints
            accepted), ``str``, ``list``, ``dict``, a parameterised form
            such as ``list[str]`` or ``dict[str, str]``, or a union such as
            ``str | None``. Left as None, it is derived from ``default``
            (``True`` -> bool, ``3`` -> int, ``0.5`` -> float, ``"x"`` -> str,
            a list -> list, a mapping -> dict); a default of None gives no
            check unless ``type`` is set. null is accepted when the default
            is None or ``type`` includes None.
        choices: if not empty, the only values accepted (null aside).
        check: an extra rule run on a non-null value of the right type;
            returns None when the value is fine, else what it must be
            (``"1 or more"``), which the error message shows.
        minimum: numbers below it are refused (``must be >= 1, got 0``).
        below: numbers at or above it are refused (``must be < 1, got 1.5``).
        expects: what a value must be, in a user's words, shown for any
            wrong value of this key instead of the type's or choices' words
            (``"'cosine' or 'linear'"`` gives ``must be 'cosine' or 'linear',
            got 5``).
        suggest: a wrong string gets a did-you-mean among ``choices``.
        legacy: set for a key of the earlier trainer that is not implemented
            here: the key is refused with :attr:`Legacy.reason` (or accepted,
            doing nothing, at :attr:`Legacy.noop`) and is in no result.
        shown_default: the default as ``docs/config.md`` shows it, where the
            value itself would mislead (``"required"``, ``"CPU count"``).
    """

    name: str
    default: Any = None
    help: str = ""
    escapes: bool = False
    aliases: tuple[str, ...] = ()
    type: Any = None
    choices: tuple[Any, ...] = ()
    check: Callable[[Any], str | None] | None = None
    minimum: float | None = None
    below: float | None = None
    expects: str = ""
    suggest: bool = False
    legacy: "Legacy | None" = None
    shown_default: str | None = None


class _NoNoop:
    def __repr__(self) -> str:
        return "NO_NOOP"


#: :attr:`Legacy.noop` when no value makes the key a no-op.
NO_NOOP: Any = _NoNoop()


@dataclass(frozen=True)
class Legacy:
    """How a key of the earlier trainer that rwkv-plug does not implement is treated.

    Attributes:
        reason: why, and what to do instead (shown in the error).
        noop: the value at which the key does nothing, so a config that sets
            it there is accepted (``true``/``false`` never equal 1/0 here).
        kind: how the error reads: ``"unsupported"`` -> ``section.key is not
            supported yet: reason``; ``"fixed"`` (the architecture fixes the
            value) -> ``section.key: reason``; ``"ours"`` (rwkv-plug sets it
            itself) -> ``section.key cannot be set: reason``.
    """

    reason: str
    noop: Any = NO_NOOP
    kind: str = "unsupported"

    def __post_init__(self) -> None:
        if self.kind not in ("unsupported", "fixed", "ours"):
            raise ValueError(f"Legacy.kind must be 'unsupported', 'fixed' or 'ours', got {self.kind!r}")

    def refusal(self, where: str) -> str:
        """The error for ``where`` (``section.key``) set to a value other than :attr:`noop`."""
        if self.kind == "fixed":
            return f"{where}: {self.reason}"
        if self.kind == "ours":
            return f"{where} cannot be set: {self.reason}"
        return f"{where} is not supported yet: {self.reason}"


def describe(cls: type) -> str:
    """The first line of a plugin class's docstring."""
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


@dataclass(frozen=True)
class KernelCaps:
    """What a WKV kernel supports. Every kernel accepts any ``T >= 1``."""

    dtypes: tuple[str, ...] = ("float32",)
    devices: tuple[str, ...] = ("cpu",)
    #: Relative speed rank used by ``kernel: auto`` (higher is preferred).
    speed_rank: int = 0
    #: The ops the kernel implements (``"wkv5"``, ``"wkv7"``), one method of that name each;
    #: selection only picks a kernel for an op it lists.
    ops: tuple[str, ...] = ("wkv5",)
    #: Whether every op takes ``resets``/``s_reset`` (state resets at record boundaries inside a
    #: packed row, ``rwkv_plug.kernels.resets``); ``data.packing_state: reset`` needs it.
    resets: bool = False


class Kernel(ABC):
    """WKV op implementations. The math of each op is in ``rwkv_plug.kernels.<op>.reference``.

    A kernel implements, as a method of the same name, every op in ``caps.ops``:
    ``wkv5(r, k, v, w, u, s0)`` and ``wkv7(r, w, k, v, a, b, s0)``, each returning
    ``(y, sT)``. With ``caps.resets`` they also take keyword arguments ``resets`` and
    ``s_reset`` (``rwkv_plug.kernels.resets``).
    """

    name: ClassVar[str]
    caps: ClassVar[KernelCaps] = KernelCaps()
    #: Tokens a kernel processes as one block; the conformance suite also
    #: checks a T that is not a multiple of it.
    chunk_size: ClassVar[int] = 16
    #: ``model.wkv_precision`` (``auto``, ``fp32`` or ``tf32``: how fp32 matrix products
    #: run, see ``rwkv_plug.kernels.precision``), set on the instance by kernel selection.
    #: A kernel with one precision only ignores it and says which in its docs.
    precision: str = "auto"

    @classmethod
    def runs_on(cls, device_type: str) -> bool:
        """Whether the kernel can run on ``device_type`` when named explicitly.

        Defaults to ``caps.devices``; a kernel may widen it (Triton runs on the
        CPU under its interpreter). ``kernel: auto`` only considers ``caps``.
        """
        return device_type in cls.caps.devices

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)``; must be cheap and never raise."""
        return True, ""


def kernel_availability(cls: type) -> tuple[bool, str]:
    """``cls.availability()``, with a check that raises turned into its reason.

    Listing and selection call this, so one broken kernel plugin cannot take
    them down.
    """
    try:
        ok, reason = cls.availability()
        return bool(ok), str(reason or "")
    except Exception as exc:
        return False, f"availability check failed: {type(exc).__name__}: {exc}"


class ModelArch(ABC):
    """An RWKV architecture: builds, initialises and detects models."""

    name: ClassVar[str]
    #: The ``model.tuning`` modes it supports (docs/training.md#tuning-modes). ``state`` needs a model
    #: whose ``zero_state`` returns ``model.tuned_state`` (a ``StartState``) as its WKV part; ``lora``
    #: needs ``nn.Linear`` projections for peft to wrap.
    tuning_modes: ClassVar[tuple[str, ...]] = ("full",)
    #: How the model indexes the last two dims of its (B, H, N, N) WKV state: ``"kv"`` [key, value]
    #: or ``"vk"`` [value, key] (state files are [value, key]).
    wkv_layout: ClassVar[str] = "vk"
    #: Whether the ``rwkv`` pip package reads a tuned state from ``blocks.N.att.time_state`` keys in a
    #: model file of this architecture (``export --merge`` of a state-tuning checkpoint writes one).
    time_state_in_model_file: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def detect(cls, state_dict: Mapping[str, Any]) -> bool:
        """Whether a checkpoint's keys belong to this architecture."""

    @classmethod
    @abstractmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Any],
        *,
        kernel: Any = "auto",
        dropout: float = 0.0,
        grad_cp: bool = False,
        dtype: Any = None,
        dim_att: int | None = None,
        dim_ffn: int | None = None,
        source: str = "state dict",
        copy: bool = True,
    ) -> Any:
        """Build the model (an ``nn.Module``) from a checkpoint's tensors.

        ``source`` names the file in error messages; ``copy=False`` lets the
        model take ownership of the tensors instead of copying them.
        """

    # Optional: each has a default, so an architecture needs only the two above.
    @classmethod
    def check_complete(cls, state_dict: Mapping[str, Any], source: str = "state dict") -> dict[str, int]:
        """Raise ``ModelError`` unless every key and shape is this architecture's; return its sizes.

        ``export`` calls it before writing a file. The default checks nothing and returns ``{}``.
        """
        return {}

    @classmethod
    def init_state_dict(cls, n_layer: int, n_embd: int, vocab_size: int, **options: Any) -> dict[str, Any]:
        """A freshly initialised state dict (``init-model --arch NAME``); the default cannot make one."""
        from rwkv_plug.core.errors import ModelError

        raise ModelError(f"model architecture '{cls.name}' cannot initialise new models")

    @classmethod
    def param_groups(cls, named_params: Any, weight_decay: float, layerwise_lr: bool) -> list[dict[str, Any]]:
        """Optimizer groups for the trainable ``(name, parameter)`` pairs.

        Each group is ``{"params", "lr_scale" (times the scheduled LR), "weight_decay", "name"}``.
        The default knows no names: without ``layerwise_lr`` one group ``all`` with the weight
        decay; with it, ``decay`` (matrices: >= 2-D after squeezing) and ``1x`` (the rest, no decay).
        """
        named = [(n, p) for n, p in named_params if p.requires_grad]
        if not layerwise_lr:
            return [{"params": [p for _, p in named], "lr_scale": 1.0, "weight_decay": weight_decay, "name": "all"}]
        matrix = [p for _, p in named if weight_decay > 0 and p.squeeze().dim() >= 2]
        rest = [p for _, p in named if not (weight_decay > 0 and p.squeeze().dim() >= 2)]
        groups = [{"params": rest, "lr_scale": 1.0, "weight_decay": 0.0, "name": "1x"},
                  {"params": matrix, "lr_scale": 1.0, "weight_decay": weight_decay, "name": "decay"}]
        return [g for g in groups if g["params"]]


@dataclass
class Registered:
    """A registry entry: the class, and the plugin that provided it."""

    name: str
    cls: type
    plugin: str
    overrides: list[str] = field(default_factory=list)
