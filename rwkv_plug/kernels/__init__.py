"""WKV kernels: the op contract, the torch/triton/cuda kernels, selection, conformance.

``contract.py`` (the math and the per-step reference), ``torch_chunked.py``,
``triton_wkv5.py`` + ``triton_impl.py``, ``cuda_wkv5.py`` + ``cuda/``,
``common.py`` (autograd glue of the fused kernels), ``select.py``
(``resolve_kernel``), ``conformance.py`` (``check_kernel``), ``hooks.py``.
Importing this package does no work.
"""
