"""WKV kernels: one folder per op, the kernels that implement them, selection, conformance.

``wkv5/`` and ``wkv7/`` each hold the op's contract and executable spec
(``reference.py``, per step) beside its fast forms (``torch_chunked.py``,
``triton.py`` + ``triton_impl.py``; wkv5 also ``fused.py`` and ``cuda.py`` +
``cuda/``). The kernels registries see are ``backend_torch.py``,
``backend_triton.py``, ``backend_cuda.py`` and ``backend_fla.py`` (wkv7 via
flash-linear-attention), each listing its ops in ``caps.ops``;
``select.py`` (``resolve_kernel``), ``conformance.py`` (``check_kernel``) with
``conformance_ops.py`` (what it needs per op), ``selfcheck.py`` with
``verdicts.py`` (the quick check before a fast kernel is used, and its cached
verdicts), ``precision.py``, ``names.py`` (the one check of a kernel name),
``hooks.py`` (registration) and ``commands.py`` (``check-kernels``).
Importing this package does no work.
"""
