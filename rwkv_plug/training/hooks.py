"""Built-in plugin: registers this package's contributions."""

from rwkv_plug.core.hookspecs import hookimpl  # noqa: F401
