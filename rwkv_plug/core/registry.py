"""Name -> class registries, one per plugin kind, hatch style.

A third-party plugin may override a built-in by registering the same name;
the override is recorded so listings can show it. Two third-party plugins
claiming one name is an error naming both.
"""

from __future__ import annotations

from collections.abc import Iterator

from rwkv_plug.core.errors import PluginError, UnknownNameError, did_you_mean
from rwkv_plug.core.interfaces import Registered


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Registered] = {}
        self._builtin: dict[str, bool] = {}

    def add(self, cls: type, plugin: str, builtin: bool) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin '{plugin}' registered a {self.kind} class {cls.__qualname__} "
                "without a string 'name' attribute"
            )
        old = self._entries.get(name)
        if old is None:
            self._entries[name] = Registered(name, cls, plugin)
            self._builtin[name] = builtin
            return
        if old.cls is cls:
            return
        if self._builtin[name] and not builtin:
            entry = Registered(name, cls, plugin, overrides=[*old.overrides, old.plugin])
            self._entries[name] = entry
            self._builtin[name] = False
            return
        raise PluginError(
            f"{self.kind} '{name}' is registered by both '{old.plugin}' and '{plugin}'; "
            f"uninstall one of them, or load only one with RWKV_PLUG_PLUGINS"
        )

    def get(self, name: str) -> type:
        return self.entry(name).cls

    def entry(self, name: str) -> Registered:
        try:
            return self._entries[name]
        except KeyError:
            names = sorted(self._entries)
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'.{did_you_mean(name, names)} "
                f"Available: {', '.join(names) or '(none)'}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Registered]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)
