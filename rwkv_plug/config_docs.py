"""The key tables of ``docs/config.md``, generated from the keys' declarations.

Each config key is declared once, as an :class:`~rwkv_plug.core.interfaces.Option`
(its default, help, aliases and legacy policy); this module writes the tables
between the marker comments of ``docs/config.md`` from those declarations and
leaves the hand-written prose around them alone (the idea of simonw/llm's
cog-generated docs). ``make docs`` runs it; ``tests/cli/test_docs.py`` fails
when the file differs from what it would write::

    python -m rwkv_plug.config_docs            # rewrite the tables in docs/config.md
    python -m rwkv_plug.config_docs --check    # exit 1 if they are out of date
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from rwkv_plug.core.interfaces import NO_NOOP, Option

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"
COMMAND = "make docs (or python -m rwkv_plug.config_docs)"
#: What to do when the tables differ (a hand edit inside a table is lost when they are regenerated).
FIX = ("change a key's text in its declaration (the Option's help in training/options.py, data/options.py or "
       f"the plugin), not in the table, then run: {COMMAND}")
_MARKER = re.compile(r"<!-- generated: ([a-z-]+) .*?-->\n.*?<!-- end generated: \1 -->", re.S)


def shown_default(opt: Option) -> str:
    """The default as a user writes it in YAML (numbers, true/false/null bare; text and lists in
    backticks), or the declaration's own words (``shown_default``) where the value would mislead."""
    if opt.shown_default is not None:
        return opt.shown_default
    value = opt.default
    if value is None or isinstance(value, (bool, int, float)):
        return _yaml(value)
    return f"`{_yaml(value)}`"


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _yaml(value: object) -> str:
    """``value`` in YAML flow style: ``[assistant]``, ``{system: System}``, ``'\\n'``."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and value.lower() not in ("null", "true", "false", "yes", "no", "on", "off")
        return value if plain else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml(k)}: {_yaml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _key(opt: Option) -> str:
    aliases = ", ".join(f"`{a}`" for a in opt.aliases)
    return f"`{opt.name}`" + (f" (alias {aliases})" if aliases else "")


def options_table(options: Iterable[Option]) -> str:
    """``| key | default | meaning |`` rows; a legacy key shows ``(refused)`` and its reason."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for opt in options:
        if opt.legacy is not None:
            rows.append(f"| {_key(opt)} | (refused) | {_cell(opt.legacy.reason)} |")
        else:
            rows.append(f"| {_key(opt)} | {_cell(shown_default(opt))} | {_cell(opt.help)} |")
    return "\n".join(rows)


def legacy_table(options: Iterable[Option]) -> str:
    """``| key | accepted as | why |`` rows for refused keys of the earlier trainer: the value at
    which each does nothing (and is accepted), and why any other is refused."""
    rows = ["| key | accepted as | why |", "|---|---|---|"]
    for opt in options:
        if opt.legacy is not None:
            noop = "never" if opt.legacy.noop is NO_NOOP else _yaml(opt.legacy.noop)
            rows.append(f"| `{opt.name}` | {_cell(noop)} | {_cell(opt.legacy.reason)} |")
    return "\n".join(rows)


def _builtin_options(kind: str) -> list[Option]:
    """The options of the built-in strategies or tokenizers, in the order their hook lists them
    (taken from the hooks, not the registry: an installed plugin never changes the docs)."""
    if kind == "strategies":
        from rwkv_plug.builtin_strategies import hooks

        classes = hooks.register_strategies()
    else:
        from rwkv_plug.builtin_tokenizers import hooks

        classes = hooks.register_tokenizers()
    return [opt for cls in classes for opt in getattr(cls, "options", ())]


def _datapack_options() -> Sequence[Option]:
    from rwkv_plug.data.datapack import DATAPACK_OPTIONS

    return DATAPACK_OPTIONS


def tables() -> dict[str, Callable[[], str]]:
    """Each generated table by its marker name."""
    from rwkv_plug.data import options as D
    from rwkv_plug.training import options as T

    return {
        "model-options": lambda: options_table(T.MODEL_OPTIONS),
        "model-legacy": lambda: legacy_table(T.MODEL_LEGACY),
        "trainer-options": lambda: options_table([*T.TRAINER_OPTIONS, *T.TRAINER_LIGHTNING, *T.TRAINER_LEGACY]),
        "checkpoint-options": lambda: options_table(T.CHECKPOINT_OPTIONS),
        "top-level-options": lambda: options_table([T.SEED_OPTION]),
        "data-options": lambda: options_table(D.DATA_OPTIONS),
        "data-legacy": lambda: legacy_table(D.DATA_LEGACY),
        "datapack-options": lambda: options_table(_datapack_options()),
        "strategy-options": lambda: options_table(_builtin_options("strategies")),
        "tokenizer-options": lambda: options_table(_builtin_options("tokenizers")),
    }


def render(text: str) -> str:
    """``text`` (docs/config.md) with every marked table regenerated; an unknown marker is an error."""
    makers = tables()

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in makers:
            raise KeyError(f"docs/config.md: no generated table named {name!r} (known: {', '.join(makers)})")
        return (f"<!-- generated: {name} (from the declarations: edit those, not this table, then run make docs) -->\n"
                f"{makers[name]()}\n<!-- end generated: {name} -->")

    return _MARKER.sub(sub, text)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    current = DOCS.read_text(encoding="utf-8")
    fresh = render(current)
    if "--check" in args:
        if fresh != current:
            print(f"{DOCS} is out of date with the config declarations; {FIX}", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        DOCS.write_text(fresh, encoding="utf-8")
        print(f"rewrote the generated tables of {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
