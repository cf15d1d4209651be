"""The plugin manager: built-ins first, then every ``rwkv_plug`` entry point.

Each third-party plugin loads and registers in isolation. One that fails is
skipped with a single warning line and listed with its error, unless strict
mode is on. The rest of the code asks this module for registries through
the typed functions at the bottom and never calls ``pm.hook.*`` itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from rwkv_plug.core import hookspecs, notice
from rwkv_plug.core.errors import PluginError, did_you_mean
from rwkv_plug.core.registry import Registry

GROUP = "rwkv_plug"

#: Built-in plugin modules, registered exactly like third-party ones.
BUILTIN_PLUGINS = (
    "rwkv_plug.builtin_strategies.hooks",
    "rwkv_plug.builtin_tokenizers.hooks",
    "rwkv_plug.kernels.hooks",
    "rwkv_plug.models.hooks",
    "rwkv_plug.data.hooks",
    "rwkv_plug.training.hooks",
)

_KINDS = {
    "strategy": "register_strategies",
    "tokenizer": "register_tokenizers",
    "kernel": "register_kernels",
    "model": "register_models",
}


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    error: str | None = None


class Plugins:
    """A loaded set of plugins and the registries they fill."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] = {}  # built per kind, on first use

    # -- loading -----------------------------------------------------------
    def load_builtins(self) -> None:
        for modname in BUILTIN_PLUGINS:
            module = importlib.import_module(modname)
            name = modname.removesuffix(".hooks")
            self.pm.register(module, name=name)
            self.info[name] = PluginInfo(name, "rwkv-plug", _own_version(), True)
        self.pm.check_pending()  # a built-in's misspelled hook is our bug: fail loudly
        self._registries = {}

    def load_entry_points(self, only: str = "all") -> None:
        """Load third-party plugins: ``all``, ``none`` or a comma list of names."""
        if only.strip().lower() == "none":
            return
        wanted = None if only.strip().lower() == "all" else {
            n.strip() for n in only.split(",") if n.strip()
        }
        installed = list(entry_points(group=GROUP))
        if wanted is not None:
            self._check_wanted(wanted, sorted({ep.name for ep in installed}))
        for ep in installed:
            if wanted is not None and ep.name not in wanted:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                ep.name,
                dist.metadata["Name"] if dist else None,
                dist.version if dist else None,
                builtin=False,
            )
            self.info[ep.name] = info
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin must not break the rest
                self._broken(info, f"failed to load: {type(exc).__name__}: {exc}")
                continue
            unknown = self._unknown_hooks(plugin)
            if unknown:  # it would register silently and contribute nothing
                self.pm.unregister(name=ep.name)
                self._broken(info, unknown)
        self._registries = {}

    def _unknown_hooks(self, plugin: Any) -> str | None:
        """Why ``plugin`` (just registered) is broken by a hook no spec has, or None.

        pluggy's ``check_pending`` finds such hooks in the whole set; plugins are
        checked as each registers, so any it finds belong to this one.
        """
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError:
            known = [name for name in dir(hookspecs) if name.startswith("register_")]
            names = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()
                           if not caller.has_spec())
            return "; ".join(f"implements unknown hook '{n}'.{did_you_mean(n, known)} Hooks are: "
                             f"{', '.join(known)}" for n in names) or "implements an unknown hook"
        return None

    def _check_wanted(self, wanted: set[str], installed: list[str]) -> None:
        """A name asked for (``--plugins`` / RWKV_PLUG_PLUGINS) that no installed plugin has."""
        for name in sorted(wanted - set(installed)):
            message = (f"plugin '{name}' (asked for by --plugins or RWKV_PLUG_PLUGINS) is not installed; "
                       f"installed plugins: {', '.join(installed) or 'none'}.{did_you_mean(name, installed)}")
            if self.strict:
                raise PluginError(message + " [strict plugin mode]")
            notice.warn(message)

    def register(self, plugin: Any, name: str) -> None:
        """Register an in-process plugin object (used by tests and embedders).

        A hook no spec has (a misspelled name) is a :class:`PluginError`.
        """
        self.pm.register(plugin, name=name)
        unknown = self._unknown_hooks(plugin)
        if unknown:
            self.pm.unregister(name=name)
            raise PluginError(f"plugin '{name}' {unknown}")
        self.info[name] = PluginInfo(name, None, None, builtin=False)
        self._registries = {}

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.info.pop(name, None)
        self._registries = {}

    def _broken(self, info: PluginInfo, error: str) -> None:
        info.error = error
        message = f"plugin '{info.name}' (distribution {info.distribution or '?'}) {error}"
        if self.strict:
            raise PluginError(message + " [strict plugin mode]")
        notice.warn(message + "; skipped")

    # -- hooks, each impl called in isolation --------------------------------
    def _call_each(self, hook_name: str, **kwargs: Any):
        """Yield ``(plugin_name, result)`` for each implementation, isolating failures."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            info = self.info.get(impl.plugin_name)
            if info is not None and info.error:
                continue
            try:
                yield impl.plugin_name, impl.function(**kwargs)
            except Exception as exc:
                if info is None or info.builtin:
                    raise
                self._broken(info, f"failed in {hook_name}: {type(exc).__name__}: {exc}")

    def registry(self, kind: str) -> Registry:
        """The registry of ``kind`` ("strategy", "tokenizer", "kernel", "model"), built on first use.

        Each kind is built alone, so listing strategies never imports the kernels' or
        models' modules (and torch with them).
        """
        if kind not in self._registries:
            reg = Registry(kind)
            for plugin, classes in self._call_each(_KINDS[kind]):
                builtin = self.info.get(plugin, PluginInfo(plugin, None, None, False)).builtin
                for cls in classes or ():
                    reg.add(cls, plugin, builtin)
            self._registries[kind] = reg
        return self._registries[kind]

    def registries(self) -> dict[str, Registry]:
        """Every kind's registry (runs every register hook)."""
        return {kind: self.registry(kind) for kind in _KINDS}

    def add_commands(self, cli: Any) -> None:
        for _ in self._call_each("register_commands", cli=cli):
            pass


def _own_version() -> str:
    from rwkv_plug import __version__

    return __version__


_current: Plugins | None = None


def configure(only: str = "all", strict: bool = False) -> Plugins:
    """Create and install the process-wide plugin set (the CLI calls this once)."""
    global _current
    plugins = Plugins(strict=strict)
    plugins.load_builtins()
    plugins.load_entry_points(only)
    _current = plugins
    return plugins


def configured() -> Plugins | None:
    """The process-wide plugin set if one is loaded, without loading it."""
    return _current


def current() -> Plugins:
    """The process-wide plugin set, loaded on first use from the environment."""
    if _current is None:
        from rwkv_plug.core.env import settings

        s = settings()
        return configure(s.plugins, s.strict_plugins)
    return _current


def reset() -> None:
    global _current
    _current = None


def install(plugins: Plugins | None) -> None:
    """Make ``plugins`` the process-wide set (None: load afresh on next use); for tests."""
    global _current
    _current = plugins


# -- typed access, the only way the rest of the code reaches hooks ----------
def strategies() -> Registry:
    return current().registry("strategy")


def tokenizers() -> Registry:
    return current().registry("tokenizer")


def kernels() -> Registry:
    return current().registry("kernel")


def models() -> Registry:
    return current().registry("model")
