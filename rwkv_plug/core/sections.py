"""A config section as a typed, frozen object, built from its :class:`Option` declarations.

Each section's keys are declared once, as ``Option`` (type, default, range,
help). :func:`section_class` turns those declarations into a frozen dataclass
whose fields are the keys, so the code after validation reads
``cfg.model.ctx_len``, never ``cfg.model["ctx_len"]``, and cannot reassign a
validated value by accident (``dataclasses.replace`` makes a changed copy).
This is litgpt's ``args.py`` idea (one field per key, with its type and
default), with the fields generated from the declarations instead of written
twice.

rwkv-plug reads every section by attribute. A section object also reads like a
read-only mapping (``m["ctx_len"]``, ``m.get("ctx_len")``, ``dict(m)``, ``**m``):
that is kept for plugins only, which get the ``data:`` section as the mapping
their ``options`` argument has always been (docs/writing_plugins.md); a plugin
reads its own keys by attribute with :func:`option_values`.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rwkv_plug.core.interfaces import Option
from rwkv_plug.core.option_types import option_type


class SectionMapping(Mapping):
    """Read-only mapping access to a section object's fields (the transition from dicts); the
    keys of a section that plugins extend (``data:``) are in its ``plugin_options`` field and
    read as keys of the section too."""

    #: the name of the field holding the keys others declare (``plugin_options``), or None
    __extra__: str | None = None

    def __getitem__(self, key: str) -> Any:
        if key in self.__section_keys__:
            return getattr(self, key)
        extra = self._extra()
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield from self.__section_keys__
        yield from self._extra()

    def __len__(self) -> int:
        return len(self.__section_keys__) + len(self._extra())

    def _extra(self) -> Mapping[str, Any]:
        name = self.__extra__
        return (getattr(self, name, None) or {}) if name else {}

    def as_dict(self) -> dict[str, Any]:
        """The values by key, plugin keys included, as a plain dict (for YAML/JSON or code that wants one)."""
        return {name: self[name] for name in self}

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (the object itself is frozen)."""
        return dataclasses.replace(self, **changes)


#: The field of a section that plugins extend: their keys by name (see ``section_class(extensible=True)``).
EXTRA = "plugin_options"


def section_class(name: str, options: Sequence[Option], module: str, doc: str = "",
                  extensible: bool = False, extra: str = EXTRA,
                  extra_help: str = "the keys plugins (strategies, tokenizers) declare") -> type:
    """A frozen dataclass named ``name`` with one field per option (legacy keys aside), typed
    by the option's type, defaulting to its default, the help in the field's metadata.
    ``extensible``: others declare more keys of this section (plugins the ``data:`` section's,
    Lightning the ``trainer:`` section's); their values go in the mapping field named ``extra``
    (``plugin_options`` unless given; read as keys of the section too).

    ``module`` is the module whose global ``name`` the class is assigned to, so that its
    instances pickle (DDP spawn pickles what holds them).
    """
    fields = []
    for opt in options:
        if opt.legacy is not None:
            continue
        tp = option_type(opt)
        default = opt.default
        if isinstance(default, (list, dict)):
            spec = dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": opt.help})
        else:
            spec = dataclasses.field(default=default, metadata={"help": opt.help})
        fields.append((opt.name, Any if tp is object else tp, spec))
    keys = tuple(f[0] for f in fields)
    if extensible:
        fields.append((extra, Mapping[str, Any], dataclasses.field(default_factory=dict,
                                                                  metadata={"help": extra_help})))
    cls = dataclasses.make_dataclass(name, fields, bases=(SectionMapping,), frozen=True)
    cls.__module__ = module
    cls.__qualname__ = name
    cls.__doc__ = doc or f"The validated {name} section."
    cls.__section_keys__ = keys
    cls.__extensible__ = extensible
    cls.__extra__ = extra if extensible else None
    cls.__options__ = {opt.name: opt for opt in options if opt.legacy is None}
    return cls


def build(cls: type, values: Mapping[str, Any]):
    """An instance of section class ``cls`` from validated ``values``; a key it has no field for
    goes to the extra mapping (``plugin_options``) of an extensible section, else is an error (a
    declaration is missing). A whole number given for a ``float`` key becomes a float."""
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in values.items():
        opt = cls.__options__.get(key)
        if opt is None:
            if cls.__extensible__:
                extra[key] = value
                continue
            raise TypeError(f"{cls.__name__} has no field {key!r}")
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and _is_float(opt):
            value = float(value)
        kwargs[key] = value
    if cls.__extensible__:
        kwargs[cls.__extra__] = extra
    return cls(**kwargs)


def _is_float(opt: Option) -> bool:
    tp = option_type(opt)
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    members = set(typing.get_args(tp)) if union else {tp}
    return float in members and int not in members


# -- a plugin's own options ---------------------------------------------------------------
_PLUGIN_CLASSES: dict[type, type] = {}


def option_values(plugin: type, options: Mapping[str, Any]):
    """The keys ``plugin`` (a strategy or tokenizer class) declares in its ``options``, read
    from ``options`` (the ``data:`` section, as a mapping) into a frozen object: one attribute
    per declared key, its default where the key is absent (``option_values(cls, opts).custom_text_key``).

    ``options`` is what the config layer validated, so the values already have their declared
    types; the object only saves the plugin from re-reading keys by string. It pickles (a
    strategy instance goes to worker processes) by rebuilding from ``plugin`` and its values.
    """
    cls = _PLUGIN_CLASSES.get(plugin)
    if cls is None:
        declared = tuple(getattr(plugin, "options", ()) or ())
        cls = section_class(f"{plugin.__name__}Options", declared, plugin.__module__,
                            f"The ``data:`` keys that {plugin.__name__} declares.")
        cls.__reduce__ = lambda self: (option_values, (plugin, self.as_dict()))
        _PLUGIN_CLASSES[plugin] = cls
    return build(cls, {key: options[key] for key in cls.__section_keys__ if key in options})
