"""Config keys set on the command line: ``--trainer.max_steps 20 --model.lr_init=1e-4``.

In the habit of LightningCLI: a dotted key names a section and a key (deeper
mappings too, e.g. ``--trainer.checkpoint.every_n_train_steps 50``); its value is
read as a YAML scalar (``20`` an integer, ``true`` a boolean, ``null`` nothing,
``[0, 1]`` a list, anything else a string), and the result is validated exactly
as if the file had said it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from rwkv_plug.core.errors import ConfigError


def _value(flag: str, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{flag} {text!r} is not a valid YAML value: {problem}; quote it "
                          f"(e.g. {flag} '\"{text}\"') to pass it as a string") from None


def split_overrides(args: Sequence[str], sections: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Split command-line words into positional arguments and ``{dotted key: value}`` overrides.

    An override is ``--KEY VALUE`` or ``--KEY=VALUE`` where KEY is ``section.key[.key...]``
    (or a top-level key such as ``seed_everything``) and its section is one of ``sections``.
    Any other ``-`` word is refused as an unknown option (``ConfigError``, one line).
    """
    positional: list[str] = []
    overrides: dict[str, Any] = {}
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        name, eq, text = word[2:].partition("=") if word.startswith("--") else ("", "", "")
        head = name.split(".", 1)[0]
        if not name or head not in sections or name.startswith(".") or name.endswith(".") or ".." in name:
            from rwkv_plug.core.errors import did_you_mean

            hint = did_you_mean(head, sections) if name else ""
            raise ConfigError(f"unknown option {word.partition('=')[0]}.{hint} Config keys are set as "
                              f"--SECTION.KEY VALUE with SECTION one of {', '.join(sections)}")
        if not eq:
            if i >= len(words):
                raise ConfigError(f"--{name} needs a value (--{name} VALUE or --{name}=VALUE)")
            text = words[i]
            i += 1
        if name in overrides:
            raise ConfigError(f"--{name} is given twice; give it once")
        overrides[name] = _value(f"--{name}", text)
    return positional, overrides


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the config mapping ``raw`` with each dotted key set; missing sections are made."""
    out = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--{dotted}: {where} is {child!r} in the config, not a mapping of keys; "
                                  f"set --{where} itself")
            node = child
        node[parts[-1]] = value
    return out


def override_header(overrides: Mapping[str, Any]) -> str:
    """YAML comment lines naming the overrides (for a saved copy of the config)."""
    import yaml

    lines = ["# written by rwkv-plug: the config file with these command-line overrides applied:"]
    for key, value in overrides.items():
        shown = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        lines.append(f"#   --{key} {shown.removesuffix('...').strip()}")
    return "\n".join(lines) + "\n"
