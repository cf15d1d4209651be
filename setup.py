"""Builds the optional native parts; metadata lives in pyproject.toml.

* the world-tokenizer trie (rwkv_plug/builtin_tokenizers/_world_trie*);
* the one-string-column JSON Lines reader (rwkv_plug/data/_jsonl.c).

``optional=True``: on a machine without a C compiler the install still
succeeds; the world tokenizer then uses its pure-Python fallback (with a
warning) and every JSON source is parsed by pyarrow's reader.
"""

import os

from setuptools import Extension, setup

posix = os.name == "posix"
trie = "rwkv_plug/builtin_tokenizers/_world_trie"

setup(
    ext_modules=[
        Extension(
            "rwkv_plug.builtin_tokenizers._world_trie",
            [f"{trie}.c", f"{trie}_core.c", f"{trie}_batch.c"],
            # depends: rebuild when the header changes, and ship it in the sdist.
            depends=[f"{trie}.h"],
            extra_compile_args=["-O3", "-pthread"] if posix else [],
            extra_link_args=["-pthread"] if posix else [],
            optional=True,
        ),
        Extension(
            "rwkv_plug.data._jsonl",
            ["rwkv_plug/data/_jsonl.c"],
            extra_compile_args=["-O3"] if posix else [],
            optional=True,
        ),
    ]
)
