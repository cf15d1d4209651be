"""The ``messages`` strategy: chat transcripts in the form today's fine-tuning tools take.

A row holds a list of messages in one column:

* OpenAI / TRL: ``{"messages": [{"role": "user", "content": "hi"}, ...]}``;
* ShareGPT: ``{"conversations": [{"from": "human", "value": "hi"}, ...]}``,
  its role names mapped by ``messages_role_map`` (human -> user, gpt -> assistant).

A ``system`` column (``messages_system_column``) becomes a leading system
message when the list has none. A message may carry ``"train": true/false``,
which overrides ``messages_train_roles`` for that message.

Two renderings (``messages_format``):

* ``rwkv`` (the default), the layout RWKV World models are trained and
  prompted with: ``User: hi\\n\\nAssistant: hello\\n\\n``. The role label
  (``Assistant:``) is a piece of its own and never learned, the content
  (with its leading space) is learned for a trained message, and so is the
  end-of-turn text after it unless ``messages_train_end_of_turn`` is false:
  learning it teaches the model to stop. Tokenising the label apart from
  the content matches inference, where the prompt ends at ``Assistant:``.
* ``chat_template``: an ``hf`` tokenizer's own chat template, rendered and
  masked by ``transformers`` (``apply_chat_template`` with
  ``return_assistant_tokens_mask``), so the learned tokens are exactly the
  template's ``{% generation %}`` blocks.

Masks are target-aligned like every strategy's: a 1 on token j means token j
is learned as the prediction from the tokens before it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rwkv_plug.builtin_strategies.pieces import Piece, PieceStrategy
from rwkv_plug.core.errors import ConfigError, DataError, did_you_mean
from rwkv_plug.core.interfaces import BadRow, FlatSamples, Option, Sample
from rwkv_plug.core.sections import option_values

COLUMNS = ("messages", "conversations")
FORMATS = ("rwkv", "chat_template")
DEFAULT_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
DEFAULT_ROLE_MAP = {"human": "user", "gpt": "assistant", "system": "system"}
#: ``{% generation %}`` (with optional whitespace control), which the library needs for its mask
_GENERATION = re.compile(r"{%-?\s*generation\s*-?%}")


class Turn(NamedTuple):  # a NamedTuple: made once per message, faster than a frozen dataclass
    """One checked message: its role (after the role map), its text, and whether it is learned."""

    role: str
    content: str
    train: bool


def _column(options: Mapping[str, Any], columns: Sequence[str]) -> str | None:
    named = option_values(MessagesStrategy, options).messages_column
    if named:
        return named if named in columns else None
    return next((c for c in COLUMNS if c in columns), None)


class MessagesStrategy(PieceStrategy):
    """Chat messages (OpenAI/TRL `messages` or ShareGPT `conversations`); learns the assistant turns."""

    name = "messages"
    detect_priority = 8  # a messages column is unambiguous: after an explicit conversation_format only
    options = (
        Option("messages_column", None, "The column holding each row's list of messages (`messages` strategy, "
                                        "below). Naming a column the dataset lacks is an error with a "
                                        "did-you-mean. Unset (null): `messages`, else `conversations`.", type=str),
        Option("messages_format", "rwkv", "`rwkv`: RWKV's chat layout (`User: ...\\n\\nAssistant: ...\\n\\n`). "
                                          "`chat_template`: the `hf` tokenizer's own chat template and the "
                                          "assistant mask `transformers` computes from its `{% generation %}` "
                                          "blocks.", choices=FORMATS),
        Option("messages_role_names", dict(DEFAULT_ROLE_NAMES), "Role → display name written as `Name:` before "
                                                                "its messages in the `rwkv` layout. Its keys "
                                                                "are the roles a message may have; any other "
                                                                "role skips the row.", type=dict[str, str]),
        Option("messages_role_map", dict(DEFAULT_ROLE_MAP), "Raw role name (ShareGPT `from`, or `role`) → role; "
                                                            "a name not listed is taken as the role itself.", type=dict[str, str]),
        Option("messages_train_roles", ["assistant"], "Roles whose messages are learned; a message's own "
                                                      "`train: true/false` overrides it. Must be `[assistant]` "
                                                      "with `chat_template`.", type=list[str]),
        Option("messages_train_end_of_turn", True, "`rwkv` layout: the end-of-turn text after a learned message "
                                                   "is learned too, so the model learns to stop. (`false` is "
                                                   "refused with `chat_template`, whose `{% generation %}` "
                                                   "blocks decide.)"),
        Option("messages_turn_end", "\n\n", "`rwkv` layout: the text that ends every message. Escapes apply.", escapes=True,
               check=lambda v: None if v else "a non-empty text"),
        Option("messages_system_column", "system", "A column whose text becomes a leading system message when "
                                                   "the row's list has none (null or empty cells are ignored; "
                                                   "null turns it off).", type=str | None),
    )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        o = option_values(cls, options)
        names = DEFAULT_ROLE_NAMES if o.messages_role_names is None else o.messages_role_names
        roles = ", ".join(names) or "none"
        problems = []
        if not names:
            problems.append("data.messages_role_names is empty: list the roles a message may have, e.g. "
                            "{system: System, user: User, assistant: Assistant}")
        empty = [role for role, label in names.items() if not label]
        if empty:
            problems.append(f"data.messages_role_names gives role(s) {', '.join(empty)} an empty display name")
        trained = o.messages_train_roles or []
        unknown = [r for r in trained if r not in names]
        if unknown:
            problems.append(f"data.messages_train_roles names {', '.join(unknown)}, which data.messages_role_names "
                            f"does not have (roles: {roles})")
        mapping = DEFAULT_ROLE_MAP if o.messages_role_map is None else o.messages_role_map
        bad = sorted({role for role in mapping.values() if role not in names})
        if bad:
            problems.append(f"data.messages_role_map maps to {', '.join(bad)}, which data.messages_role_names "
                            f"does not have (roles: {roles})")
        if o.messages_system_column and "system" not in names:
            problems.append("data.messages_system_column needs a 'system' role in data.messages_role_names; "
                            "add it or set messages_system_column: null")
        if o.messages_format == "chat_template":
            # the library's mask marks the template's generation blocks: only those can be learned
            if list(trained) != ["assistant"]:
                problems.append("data.messages_train_roles must be [assistant] with messages_format: "
                                "chat_template (the template's mask marks assistant turns only); use "
                                "messages_format: rwkv to learn other roles")
            if o.messages_train_end_of_turn is False:
                problems.append("data.messages_train_end_of_turn applies to messages_format: rwkv only; with "
                                "chat_template the template's {% generation %} blocks decide")
        return problems

    @classmethod
    def matches(cls, columns: Sequence[str], options: Mapping[str, Any]) -> bool:
        named = option_values(cls, options).messages_column
        if named and named not in columns:
            # the user named a column that is not there: say so rather than fall back
            raise DataError(f"data.messages_column is '{named}' but the dataset has no such column "
                            f"(columns: {list(columns)}).{did_you_mean(named, columns)}")
        return _column(options, columns) is not None

    @classmethod
    def expects(cls, options: Mapping[str, Any]) -> str:
        named = option_values(cls, options).messages_column
        if named:
            return f"needs a '{named}' column of messages (data.messages_column)"
        return "needs a 'messages' or 'conversations' column of messages"

    def __init__(self, options: Mapping[str, Any], tokenizer) -> None:
        super().__init__(options, tokenizer)
        problems = self.check_options(self.opts)
        if problems:
            raise ConfigError("; ".join(problems))
        o = option_values(MessagesStrategy, self.opts)
        self.column = o.messages_column
        self.names = dict(DEFAULT_ROLE_NAMES if o.messages_role_names is None else o.messages_role_names)
        self.role_map = dict(DEFAULT_ROLE_MAP if o.messages_role_map is None else o.messages_role_map)
        # raw role name -> role, for the names that give a known role (the fast path of _turn)
        self.known = {raw: role for raw in {*self.names, *self.role_map}
                      if (role := self.role_map.get(raw, raw)) in self.names}
        self.trained = frozenset(o.messages_train_roles or ())
        self.learn_end = o.messages_train_end_of_turn is not False
        self.system_column = o.messages_system_column
        self.format = o.messages_format or "rwkv"
        if self.format == "chat_template":
            self.hf = _template_tokenizer(tokenizer)
        else:
            # labels and the end of a turn are their own pieces: tokenised once here for the per-row path
            # (the flat path tokenises their texts within its batch, which gives the same ids)
            self.label_texts = {role: f"{label}:" for role, label in self.names.items()}
            self.turn_end_text = o.messages_turn_end or "\n\n"
            self.labels = {role: tokenizer.encode(text) for role, text in self.label_texts.items()}
            self.turn_end = tokenizer.encode(self.turn_end_text)
            # the flat path tokenises an empty content as the text "" (a piece of its own only there)
            self.empty_text_ids = bool(tokenizer.encode(""))

    # -- reading a row ------------------------------------------------------
    def turns(self, row: Mapping[str, Any]) -> list[Turn]:
        """The row's messages, checked; raises :class:`BadRow` with the reason (no cell content in it)."""
        column = self.column or next((c for c in COLUMNS if row.get(c) is not None), COLUMNS[0])
        if column not in row:
            raise BadRow(f"column '{column}' is missing")
        messages = row[column]
        if messages is None:
            raise BadRow(f"column '{column}' is None")
        if not isinstance(messages, list):
            raise BadRow(f"column '{column}' holds {type(messages).__name__}, not a list of messages")
        if not messages:
            raise BadRow(f"column '{column}' is an empty list of messages")
        turn = self._turn
        out = [turn(m, column) for m in messages]
        system = row.get(self.system_column) if self.system_column else None
        if system is not None and system != "":
            if not isinstance(system, str):
                raise BadRow(f"column '{self.system_column}' holds {type(system).__name__}, not text")
            if out[0].role != "system":  # the list's own system message wins
                out.insert(0, Turn("system", system, "system" in self.trained))
        if not any(t.train for t in out):
            raise BadRow(f"no message is learned (data.messages_train_roles: {', '.join(sorted(self.trained))})")
        return out

    def _turn(self, message: Any, column: str) -> Turn:
        if type(message) is dict:  # the common, valid case in the fewest steps (preload calls this per message)
            raw = message.get("role")
            if raw is not None:
                content = message.get("content")
            else:
                raw, content = message.get("from"), message.get("value")
            role = self.known.get(raw) if type(raw) is str else None
            if role is not None and type(content) is str:
                flag = message.get("train")
                if flag is None:
                    return Turn(role, content, role in self.trained)
                if flag is True or flag is False:
                    return Turn(role, content, flag)
        return self._checked_turn(message, column)

    def _checked_turn(self, message: Any, column: str) -> Turn:
        """``_turn`` step by step: the turn, or the :class:`BadRow` that says what is wrong."""
        if not isinstance(message, Mapping):
            raise BadRow(f"a message in '{column}' is {type(message).__name__}, not a mapping")
        # by value, not by key: a table's column of structs gives every message every key seen (None if unset)
        if message.get("role") is not None:
            role_key, text_key = "role", "content"
        elif message.get("from") is not None:
            role_key, text_key = "from", "value"
        else:
            raise BadRow(f"a message in '{column}' has neither 'role' nor 'from'")
        raw = message[role_key]
        if not isinstance(raw, str):
            raise BadRow(f"a message's '{role_key}' in '{column}' holds {type(raw).__name__}, not a role name")
        role = self.role_map.get(raw, raw)
        if role not in self.names:
            raise BadRow(f"a message in '{column}' has unknown role {raw!r} (roles: {', '.join(self.names)}; "
                         "map others with data.messages_role_map)")
        content = message.get(text_key)
        if content is None:
            raise BadRow(f"a message in '{column}' has no '{text_key}'")
        if not isinstance(content, str):
            raise BadRow(f"a message's '{text_key}' in '{column}' holds {type(content).__name__}, not text")
        flag = message.get("train")
        if flag is not None and not isinstance(flag, bool):
            raise BadRow(f"a message's 'train' in '{column}' holds {type(flag).__name__}, not true or false")
        return Turn(role, content, (role in self.trained) if flag is None else flag)

    # -- the rwkv layout ----------------------------------------------------
    def pieces(self, row: Mapping[str, Any]) -> list[Piece]:
        out: list[Piece] = []
        for turn in self.turns(row):
            out.append((self.labels[turn.role], False))
            if turn.content:
                out.append((" " + turn.content, turn.train))
            out.append((self.turn_end, turn.train and self.learn_end))
        return out

    def _flat_layout(self) -> bool:
        """Whether rows are read and laid out as this class does in the rwkv format (the flat path's)."""
        cls, own = type(self), MessagesStrategy
        return (self.format == "rwkv" and cls.pieces is own.pieces and cls.turns is own.turns
                and cls.encode_batch is own.encode_batch and cls.encode is own.encode)

    def fast_paths(self) -> frozenset[str]:
        if not self._flat_layout():
            return frozenset()
        # the Arrow path gives what this class's encode_flat gives: not a subclass's own
        return frozenset({"flat", "arrow"}) if self._own_flat() else frozenset({"flat"})

    def _own_flat(self) -> bool:
        return type(self).encode_flat is MessagesStrategy.encode_flat

    def encode_flat(self, rows: Sequence[Mapping[str, Any]]) -> FlatSamples | None:
        """``encode_batch`` of the rwkv layout as flat arrays (the pipeline's fast path), or None to decline
        (``chat_template``, and subclasses that change how a row is read or laid out); see
        :mod:`rwkv_plug.builtin_strategies.messages_flat`."""
        if not self._flat_layout():
            return None
        from rwkv_plug.builtin_strategies.messages_flat import encode_rwkv_flat

        return encode_rwkv_flat(self, rows)

    def encode_arrow(self, table: Any) -> FlatSamples | None:
        """``encode_flat`` of a pyarrow table's rows, read column-wise from its buffers, or None to
        decline (as ``encode_flat`` does, and for tables it does not read: the rows then go to
        ``encode_flat``); see :mod:`rwkv_plug.builtin_strategies.messages_arrow`."""
        if not (self._flat_layout() and self._own_flat()):
            return None
        from rwkv_plug.builtin_strategies.messages_arrow import encode_rwkv_arrow

        return encode_rwkv_arrow(self, table)

    # -- the tokenizer's chat template --------------------------------------
    def encode(self, row: Mapping[str, Any]) -> Sample:
        if self.format != "chat_template":
            return super().encode(row)
        result = self.encode_batch([row])[0]
        if isinstance(result, BadRow):
            raise result
        return result

    def encode_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Sample | BadRow]:
        if self.format != "chat_template":
            return super().encode_batch(rows)
        plans: list[list[Turn] | BadRow] = []
        for row in rows:
            try:
                plans.append(self.turns(row))
            except BadRow as exc:
                plans.append(exc)
        chats = [[{"role": t.role, "content": t.content} for t in p] for p in plans if not isinstance(p, BadRow)]
        out = self.hf.apply_chat_template(chats, tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True) if chats else {}
        ids, masks = iter(out.get("input_ids", ())), iter(out.get("assistant_masks", ()))
        results: list[Sample | BadRow] = []
        for plan in plans:
            if isinstance(plan, BadRow):
                results.append(plan)
                continue
            try:
                results.append(Sample(list(next(ids)), _apply_flags(plan, list(next(masks)))))
            except BadRow as exc:
                results.append(exc)
        return results


def _template_tokenizer(tokenizer: Any) -> Any:
    """The ``transformers`` tokenizer behind an ``hf`` tokenizer whose template can mask, else a ConfigError."""
    hf = getattr(tokenizer, "hf", None)
    if hf is None or not hasattr(hf, "apply_chat_template"):
        raise ConfigError(f"data.messages_format: chat_template needs an hf tokenizer (data.tokenizer: a Hugging "
                          f"Face name or folder), not '{getattr(tokenizer, 'name', tokenizer)}'; use "
                          "messages_format: rwkv")
    try:
        template = hf.get_chat_template()
    except ValueError:
        raise ConfigError("data.messages_format is chat_template, but the hf tokenizer has no chat template; "
                          "use messages_format: rwkv, or a tokenizer that has one") from None
    if not _GENERATION.search(template):
        raise ConfigError("data.messages_format is chat_template, but the tokenizer's chat template has no "
                          "{% generation %} markers, so transformers cannot say which tokens are the assistant's "
                          "and nothing would be masked; add {% generation %}...{% endgeneration %} around the "
                          "assistant content in its chat_template, or use messages_format: rwkv")
    return hf


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    """The ``[start, end)`` spans of consecutive ones."""
    out, start = [], None
    for j, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = j
        elif not bit and start is not None:
            out.append((start, j))
            start = None
    return out


def _apply_flags(turns: list[Turn], mask: list[int]) -> list[int]:
    """The template's mask with per-message ``train`` flags applied; a :class:`BadRow` where it cannot be."""
    assistant = [t for t in turns if t.role == "assistant"]
    if any(t.train for t in turns if t.role != "assistant"):
        raise BadRow("a 'train': true on a message that is not the assistant's needs messages_format: rwkv "
                     "(the chat template marks assistant turns only)")
    runs = _runs(mask)
    if not runs:
        raise BadRow("the chat template marked none of the assistant's tokens in this row")
    if all(t.train for t in assistant):
        return mask
    if len(runs) != len(assistant):
        raise BadRow(f"the chat template marked {len(runs)} spans for {len(assistant)} assistant messages, so "
                     "their 'train' flags cannot be applied")
    for turn, (start, end) in zip(assistant, runs):
        if not turn.train:
            mask[start:end] = [0] * (end - start)
    return mask
