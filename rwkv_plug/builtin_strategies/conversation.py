"""The ``conversation`` strategy: a column holding a list of turns, flattened into one sample.

Two layouts, as in the earlier trainer (``conversation_format``):

* ``iopairs``: each turn is a mapping; every key of it, in the turn's own
  order, becomes ``prefix(key)`` + its text + ``suffix(key)``. The text is
  learned unless ``conversation_input_key_mask`` says false for that key.
* ``sender``: each turn names its sender under ``conversation_sender_key``;
  for every (key -> template) of ``conversation_input_key_map`` the turn
  has, the template with ``{sender}`` replaced by the sender's label
  (``conversation_sender_value_map``) comes first, then the text, learned
  unless ``conversation_sender_mask`` says false for that sender, then the
  sender's suffix.

Prefixes, suffixes and ``conversation_end_of_conversation`` (appended once
after a conversation that produced tokens) are always learned.

Differences from the earlier trainer (fixed defects): ``sender`` works
without a suffix map (an empty one silently turned it off, a missing one
crashed); null mask maps mean "learn everything" (null crashed); a turn
that is not a mapping, a missing sender or a non-text value skips the row
with its reason instead of failing the build; ``conversation_key`` is
required (a null key meant "the row is the list", which a table row never is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rwkv_plug.builtin_strategies.pieces import Piece, PieceStrategy
from rwkv_plug.core.interfaces import BadRow, Option
from rwkv_plug.core.sections import option_values

FORMATS = ("iopairs", "sender")


class ConversationStrategy(PieceStrategy):
    """A column of turns (conversation_format iopairs or sender), flattened with prefixes and masks."""

    name = "conversation"
    detect_priority = 5  # with conversation_format set, tried before the other built-ins
    options = (
        Option("conversation_format", None, "`iopairs` or `sender` turns the `conversation` strategy on "
                                            "(below); null leaves it off.",
               type=str, choices=FORMATS),
        Option("conversation_key", None, "The column holding each row's list of turns; required with "
                                         "`conversation_format`.",
               type=str),
        Option("conversation_input_key_prefix_map", None, "`iopairs`: key → text before that key's value. "
                                                          "Escapes apply.",
               type=dict[str, str], escapes=True),
        Option("conversation_input_key_mask", None, "`iopairs`: key → whether that key's text is learned (a key "
                                                    "not listed: learned).",
               type=dict[str, bool]),
        Option("conversation_sender_key", None, "`sender`: the key of a turn naming its sender; required with "
                                                "`sender`.", type=str),
        Option("conversation_sender_value_map", None, "`sender`: raw sender → label that replaces `{sender}` in "
                                                      "the templates. Escapes apply.",
               type=dict[str, str], escapes=True),
        Option("conversation_input_key_map", None, "`sender`: key of a turn → template written before its text "
                                                   "(with `{sender}`); only these keys are read. Required with "
                                                   "`sender`. Escapes apply.",
               type=dict[str, str], escapes=True),
        Option("conversation_sender_suffix", None, "Text after a value: per key with `iopairs`, per raw sender "
                                                   "with `sender`. Escapes apply.", type=dict[str, str], escapes=True),
        Option("conversation_sender_mask", None, "`sender`: raw sender → whether its text is learned (a sender "
                                                 "not listed: learned).", type=dict[str, bool]),
        Option("conversation_end_of_conversation", None, "Text appended once after each conversation that "
                                                         "produced tokens. Escapes apply.",
               type=str, escapes=True),
    )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        o = option_values(ConversationStrategy, options)
        fmt = o.conversation_format
        if fmt is None:
            return []
        problems = []
        if not o.conversation_key:
            problems.append("data.conversation_key is required with conversation_format: name the column "
                            "that holds the list of turns")
        if fmt == "sender":
            if not o.conversation_sender_key:
                problems.append("data.conversation_sender_key is required with conversation_format: sender")
            if not o.conversation_input_key_map:
                problems.append("data.conversation_input_key_map is required with conversation_format: sender "
                                "(which keys of a turn hold its text, e.g. {content: '{sender}: '})")
        return problems

    @classmethod
    def matches(cls, columns: Sequence[str], options: Mapping[str, Any]) -> bool:
        o = option_values(ConversationStrategy, options)
        return o.conversation_format in FORMATS and o.conversation_key in columns

    @classmethod
    def expects(cls, options: Mapping[str, Any]) -> str:
        o = option_values(ConversationStrategy, options)
        if o.conversation_format not in FORMATS:
            return "is off (set data.conversation_format to iopairs or sender)"
        return f"needs a '{o.conversation_key}' column of turns"

    def __init__(self, options: Mapping[str, Any], tokenizer) -> None:
        super().__init__(options, tokenizer)
        o, enc = option_values(ConversationStrategy, options), tokenizer.encode
        self.format, self.key = o.conversation_format, o.conversation_key
        self.suffix = {k: enc(v) for k, v in (o.conversation_sender_suffix or {}).items() if v}
        end = o.conversation_end_of_conversation
        self.end = enc(end) if end else []
        if self.format == "iopairs":
            self.prefix = {k: enc(v) for k, v in (o.conversation_input_key_prefix_map or {}).items() if v}
            self.key_mask = dict(o.conversation_input_key_mask or {})
        else:
            self.sender_key = o.conversation_sender_key
            self.sender_mask = dict(o.conversation_sender_mask or {})
            self.templates = dict(o.conversation_input_key_map or {})
            labels = dict(o.conversation_sender_value_map or {})
            # the template of each key, with each known sender's label filled in, encoded once
            self.sender_prefix = {(key, sender): enc(template.replace("{sender}", label))
                                  for key, template in self.templates.items() for sender, label in labels.items()
                                  if template.replace("{sender}", label)}

    def pieces(self, row: Mapping[str, Any]) -> list[Piece]:
        turns = row.get(self.key)
        if not isinstance(turns, list):
            raise BadRow(f"column '{self.key}' holds {type(turns).__name__}, not a list of turns")
        out: list[Piece] = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, Mapping):
                raise BadRow(f"turn {i} of column '{self.key}' is {type(turn).__name__}, not a mapping")
            out += self._iopair(i, turn) if self.format == "iopairs" else self._sender_turn(i, turn)
        if out and self.end:
            out.append((self.end, True))
        return out

    def _iopair(self, i: int, turn: Mapping[str, Any]) -> list[Piece]:
        out: list[Piece] = []
        for key, value in turn.items():
            text = _text(value, i, key)
            if key in self.prefix:
                out.append((self.prefix[key], True))
            out.append((text, bool(self.key_mask.get(key, True))))
            if key in self.suffix:
                out.append((self.suffix[key], True))
        return out

    def _sender_turn(self, i: int, turn: Mapping[str, Any]) -> list[Piece]:
        if self.sender_key not in turn:
            raise BadRow(f"turn {i} has no '{self.sender_key}' (conversation_sender_key)")
        sender = str(turn[self.sender_key])
        out: list[Piece] = []
        for key in self.templates:
            if key not in turn:
                continue
            text = _text(turn[key], i, key)
            if (key, sender) in self.sender_prefix:
                out.append((self.sender_prefix[key, sender], True))
            out.append((text, bool(self.sender_mask.get(sender, True))))
            if sender in self.suffix:
                out.append((self.suffix[sender], True))
        return out


def _text(value: Any, turn: int, key: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"turn {turn} key '{key}' holds {type(value).__name__}, not text")
    return value
