"""Registers the example's strategies with rwkv-plug."""

from rwkv_plug import hookimpl


@hookimpl
def register_strategies():
    # Imported here so that loading the plugin stays cheap.
    from rwkv_plug_example.chat import ChatStrategy
    from rwkv_plug_example.text_eos import TextWithEndOfText

    return [ChatStrategy, TextWithEndOfText]
