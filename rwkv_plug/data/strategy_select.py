"""Picks the strategy for a dataset, once, from its column names.

``data.strategy: NAME`` forces a registered strategy (third-party ones
included); if it describes its columns (``expects``) and defines
``matches``, the columns must still satisfy it.
Otherwise every registered strategy is asked, in the order of
its ``priority(options)`` (its ``detect_priority`` unless options change
it), whether it ``matches`` the columns; the first that does wins. With the
built-ins this is the seed notebook's order: multi_column (any of its keys
is a column), then prompt_completion (both columns), then text, except
that an explicit ``custom_text_key`` puts text first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rwkv_plug.core import plugins
from rwkv_plug.core.errors import DataError
from rwkv_plug.core.interfaces import Strategy


def pick_strategy(
    columns: Sequence[str], data_options: Mapping[str, Any], forced: str | None
) -> type[Strategy]:
    """The strategy class for a dataset with ``columns``.

    Raises ``UnknownNameError`` (with did-you-mean) for an unknown forced
    name, ``ConfigError`` for bad strategy options, a ``DataError`` when a
    forced strategy's ``matches`` rejects the columns (before any row is
    tokenised), and one ``DataError`` listing the columns and what each
    strategy expects when none fits.
    """
    registry = plugins.strategies()
    columns = list(columns)
    if forced:
        cls = registry.get(forced)
        # a strategy that says nothing of its columns (no expects(), or Strategy's
        # matches()) is one that is never auto-detected: it is taken as forced
        own = getattr(cls.matches, "__func__", cls.matches) is not Strategy.matches.__func__
        expects = cls.expects(data_options)
        if own and expects and not cls.matches(columns, data_options):
            raise DataError(f"data.strategy is '{forced}', which {expects}, but the source's columns are "
                            f"{', '.join(columns)}; pick another data.strategy, or leave it unset to "
                            "pick one from the columns")
        return cls
    entries = sorted(registry, key=lambda e: (e.cls.priority(data_options), e.name))
    for entry in entries:
        if entry.cls.matches(columns, data_options):
            return entry.cls
    needs = []
    for entry in entries:
        expects = entry.cls.expects(data_options)
        if not expects:
            expects = f"is not auto-detected (set data.strategy: {entry.name})"
        needs.append(f"{entry.name} {expects}")
    raise DataError(
        f"no strategy fits columns {columns}: {'; '.join(needs)}. "
        "Set data.strategy or data.custom_text_key."
    )
