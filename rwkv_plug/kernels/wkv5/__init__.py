"""The ``wkv5`` op (RWKV-v5): ``reference.py`` is the executable spec.

``torch_chunked.py`` is the chunked pure-PyTorch form, ``fused.py`` the
autograd glue of the fused kernels, ``triton.py`` + ``triton_impl.py`` and
``cuda.py`` + ``cuda/`` their backends. Importing this package does no work.
"""
