"""rwkv-plug: a plugin-based trainer for RWKV language models.

Importing this package is cheap: it loads no plugin, reads no environment
variable and compiles nothing. Work starts in :mod:`rwkv_plug.core.cli`.
"""

__version__ = "0.1.0"
