"""Chat transcripts where only the final replies are learned.

The built-in ``messages`` strategy learns every assistant turn of a
conversation. Some fine-tuning sets hold long conversations whose earlier
replies are context (written by another model, or already learned from a
shorter copy of the same conversation), and only the final answer should be
trained. This strategy does that: with ``chat_learned_replies: 1`` (the
default) only the last assistant reply and the separator after it are
learned; with 2 the last two, and with 0 every reply.

It is never picked from a dataset's columns (``messages`` is, for a
``messages`` column): a user asks for it with ``data.strategy: chat``.

A row looks like ``{"messages": [{"role": "user", "content": "hi"},
{"role": "assistant", "content": "hello"}]}`` and renders as::

    User: hi

    Assistant: hello

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rwkv_plug import BadRow, ConfigError, Option, Sample, Strategy

DEFAULT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


class ChatStrategy(Strategy):
    """Chat transcripts (role/content messages); learns only the last assistant reply (data.strategy: chat)."""

    name = "chat"
    # No matches(): the strategy is never auto-detected, only chosen with data.strategy: chat.
    options = (
        # a string, a mapping and an int: types derived from the defaults
        Option("chat_messages_key", "messages", "Column holding the list of messages."),
        Option("chat_turn_separator", "\n\n", "Text that ends each turn.", escapes=True),
        # the default cannot say what the entries are: declare it
        Option("chat_role_names", DEFAULT_ROLES, "Role -> label written before each turn.",
               type=dict[str, str]),
        Option("chat_learned_replies", 1, "How many of the last assistant replies are learned (0: all).",
               check=lambda n: None if n >= 0 else "0 or more"),
    )

    def __init__(self, options: Mapping[str, Any], tokenizer) -> None:
        super().__init__(options, tokenizer)
        # role labels and the separator are tokenised once, each as its own piece
        self.labels = {role: tokenizer.encode(f"{label}:") for role, label in self.opts["chat_role_names"].items()}
        self.separator = tokenizer.encode(self.opts["chat_turn_separator"] or "")
        self.learned_replies = self.opts["chat_learned_replies"]

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        # a rule across keys, found when the config is read: replies need an assistant role
        roles = options.get("chat_role_names") or DEFAULT_ROLES
        if "assistant" in roles:
            return []
        return [f"data.chat_role_names needs an 'assistant' role, whose replies are learned (roles: "
                f"{', '.join(roles) or 'none'})"]

    def encode(self, row: Mapping[str, Any]) -> Sample:
        key = self.opts["chat_messages_key"]
        messages = row.get(key)
        if not isinstance(messages, list) or not messages:
            raise BadRow(f"column '{key}' is not a non-empty list of messages")
        turns = []
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, Mapping) else None
            content = message.get("content") if isinstance(message, Mapping) else None
            if role not in self.labels or not isinstance(content, str):
                raise BadRow(f"message {i} in '{key}' needs a known role and string content")
            turns.append((role, content))
        replies = [i for i, (role, _) in enumerate(turns) if role == "assistant"]
        if not replies:
            raise BadRow(f"no assistant reply in '{key}'")
        learned = set(replies[-self.learned_replies:] if self.learned_replies else replies)
        sample = Sample([], [])
        for i, (role, content) in enumerate(turns):
            learn = i in learned
            sample.extend(self.labels[role], learn=False)
            sample.extend(self.tokenizer.encode(" " + content), learn=learn)
            # one separator ends each turn; it is learned with a learned reply, which teaches
            # the model to stop, and a last turn that is not learned needs none
            if learn or i + 1 < len(turns):
                sample.extend(self.separator, learn=learn)
        return sample
