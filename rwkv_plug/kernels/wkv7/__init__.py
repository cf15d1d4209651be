"""The ``wkv7`` op (RWKV-7): ``reference.py`` is the contract and executable spec;
``torch_chunked.py`` (the torch kernel's chunked form), ``triton.py`` +
``triton_impl.py`` (the triton kernel's scan) and ``triton_aot.py`` (compile
check without a GPU) implement it."""
