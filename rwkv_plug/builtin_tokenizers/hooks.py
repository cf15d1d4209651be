"""Built-in plugin: registers the neox, world and hf tokenizers."""

from rwkv_plug.core.hookspecs import hookimpl


@hookimpl
def register_tokenizers():
    from rwkv_plug.builtin_tokenizers.hf import HFTokenizer
    from rwkv_plug.builtin_tokenizers.neox import NeoxTokenizer
    from rwkv_plug.builtin_tokenizers.world import WorldTokenizer

    return [NeoxTokenizer, WorldTokenizer, HFTokenizer]
