"""Built-in plugin: registers the text, prompt_completion, multi_column, conversation and messages strategies."""

from rwkv_plug.core.hookspecs import hookimpl


@hookimpl
def register_strategies():
    from rwkv_plug.builtin_strategies.conversation import ConversationStrategy
    from rwkv_plug.builtin_strategies.messages import MessagesStrategy
    from rwkv_plug.builtin_strategies.multi_column import MultiColumnStrategy
    from rwkv_plug.builtin_strategies.prompt_completion import PromptCompletionStrategy
    from rwkv_plug.builtin_strategies.text import TextStrategy

    return [TextStrategy, PromptCompletionStrategy, MultiColumnStrategy, ConversationStrategy, MessagesStrategy]
