"""Built-in plugin: registers the text, prompt_completion and multi_column strategies."""

from rwkv_plug.core.hookspecs import hookimpl


@hookimpl
def register_strategies():
    from rwkv_plug.builtin_strategies.multi_column import MultiColumnStrategy
    from rwkv_plug.builtin_strategies.prompt_completion import PromptCompletionStrategy
    from rwkv_plug.builtin_strategies.text import TextStrategy

    return [TextStrategy, PromptCompletionStrategy, MultiColumnStrategy]
