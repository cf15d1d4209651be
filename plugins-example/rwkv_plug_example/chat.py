"""Chat transcripts in the common ``messages`` format.

A row looks like ``{"messages": [{"role": "user", "content": "hi"},
{"role": "assistant", "content": "hello"}]}`` and renders as::

    User: hi

    Assistant: hello

Only the turns of the trained roles (assistant by default) are learned,
together with the separator that ends them, so the model learns when to stop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rwkv_plug import BadRow, ConfigError, Option, Sample, Strategy

DEFAULT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


class ChatStrategy(Strategy):
    """Chat transcripts (a list of role/content messages); learns the assistant turns."""

    name = "chat"
    detect_priority = 5  # a messages column is unambiguous: try it first
    options = (
        # a string and a mapping/list: types derived from the defaults
        Option("chat_messages_key", "messages", "Column holding the list of messages."),
        Option("chat_turn_separator", "\n\n", "Text between turns.", escapes=True),
        # the defaults cannot say what the entries are: declare it
        Option("chat_role_names", DEFAULT_ROLES, "Role -> label written before each turn.",
               type=dict[str, str]),
        Option("chat_train_roles", ["assistant"], "Roles whose turns are learned.", type=list[str]),
    )

    def __init__(self, options: Mapping[str, Any], tokenizer) -> None:
        super().__init__(options, tokenizer)
        roles = self.opts["chat_role_names"]
        if not isinstance(roles, Mapping) or not all(isinstance(v, str) for v in roles.values()):
            raise ConfigError("data.chat_role_names must map each role to a label string")
        self.labels = {role: tokenizer.encode(f"{label}:") for role, label in roles.items()}
        self.trained = set(self.opts["chat_train_roles"] or ())
        self.separator = tokenizer.encode(self.opts["chat_turn_separator"] or "")

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        # a rule across two keys, found when the config is read: a trained role needs a label
        roles = options.get("chat_role_names") or DEFAULT_ROLES
        unknown = [r for r in options.get("chat_train_roles") or () if r not in roles]
        if not unknown:
            return []
        return [f"data.chat_train_roles names {', '.join(map(repr, unknown))}, which data.chat_role_names "
                f"does not have ({', '.join(roles)})"]

    @classmethod
    def matches(cls, columns: Sequence[str], options: Mapping[str, Any]) -> bool:
        return options.get("chat_messages_key", "messages") in columns

    @classmethod
    def expects(cls, options: Mapping[str, Any]) -> str:
        return f"needs a '{options.get('chat_messages_key', 'messages')}' column of role/content messages"

    def encode(self, row: Mapping[str, Any]) -> Sample:
        key = self.opts["chat_messages_key"]
        messages = row.get(key)
        if not isinstance(messages, list) or not messages:
            raise BadRow(f"column '{key}' is not a non-empty list of messages")
        sample = Sample([], [])
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, Mapping) else None
            content = message.get("content") if isinstance(message, Mapping) else None
            if role not in self.labels or not isinstance(content, str):
                raise BadRow(f"message {i} in '{key}' needs a known role and string content")
            learn = role in self.trained
            sample.extend(self.labels[role], learn=False)
            sample.extend(self.tokenizer.encode(" " + content), learn=learn)
            # one separator ends each turn; it is learned with a trained reply, which teaches
            # the model to stop, and a last turn that is not trained needs none
            if learn or i + 1 < len(messages):
                sample.extend(self.separator, learn=learn)
        return sample
