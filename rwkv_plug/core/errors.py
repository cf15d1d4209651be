"""One exception hierarchy for everything a user can get wrong.

The CLI prints any :class:`RwkvPlugError` as one line and exits non-zero;
``--debug`` adds the traceback. Messages say what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RwkvPlugError(Exception):
    """Base class of every error meant for the user rather than a developer."""

    exit_code = 1


class ConfigError(RwkvPlugError):
    """A config file, key or value is wrong."""

    exit_code = 2


class UnknownNameError(RwkvPlugError):
    """A strategy, tokenizer, kernel, model or command name is not registered."""

    exit_code = 2


class PluginError(RwkvPlugError):
    """A plugin failed to load, or two plugins claim the same name."""


class DataError(RwkvPlugError):
    """A dataset source, column or row cannot be used."""


class TokenizerError(RwkvPlugError):
    """A tokenizer cannot be found or loaded."""


class KernelError(RwkvPlugError):
    """A WKV kernel is unavailable or failed."""


class ModelError(RwkvPlugError):
    """A model file is missing, unsafe or does not match any architecture."""


class OutputError(RwkvPlugError):
    """An output file (model, checkpoint, export) cannot be written where asked."""


class TrainingError(RwkvPlugError):
    """Training cannot start or continue."""


class Interrupted(RwkvPlugError):
    """The user stopped a command (Ctrl-C); the message says what was kept."""

    exit_code = 130


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
