"""Vocabulary-sized gradient buffers that a CPU run reuses from step to step.

A fresh (V, C) gradient each step is costly on a CPU: a block that size comes
straight from the OS (glibc maps every allocation over 32 MiB anew and returns
it on free), so every step pays a page fault per 4 KiB before anything is
written: with the world vocab at C = 512 (128 MiB) ~60-110 ms, against ~8 ms
to zero the same memory again (bench/bench_head.py embedding).

:func:`grad_buffer` keeps up to two buffers per weight and hands one out again
only when nobody else holds it any more (the previous step's ``.grad`` was set
to None, or the buffer was summed into another gradient); otherwise a fresh one.
The caller returns the buffer from its backward as ``buf.detach()`` (a tensor
object of its own, which autograd keeps as ``.grad`` without a copy).

On CUDA the caching allocator already reuses memory: there it is a plain allocation.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

#: Buffers kept per weight: one can be the live ``.grad`` while the next backward fills the other.
POOL_SIZE = 2

#: id(weight) -> its buffers; an entry goes when its weight does (a WeakKeyDictionary
#: cannot hold tensors: it compares keys with ==, which is elementwise for tensors)
_pools: dict[int, list[Tensor]] = {}

#: torch's count of references to a storage (a private API; without it nothing is pooled)
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _unshared(buf: Tensor) -> bool:
    """True when only the pool holds ``buf``'s memory (no ``.grad`` or saved gradient uses it)."""
    # the pool's tensor, plus the storage object made here to ask
    return _use_count(buf.untyped_storage()._cdata) <= 2


def grad_buffer(weight: Tensor, dtype: torch.dtype | None = None, zeroed: bool = True) -> Tensor:
    """A contiguous tensor shaped like ``weight`` (in ``dtype``, default the weight's) for its
    gradient, zeroed unless ``zeroed`` is False; from the pool on a CPU where one is free."""
    dtype = dtype or weight.dtype
    if weight.device.type != "cpu" or _use_count is None:
        make = torch.zeros if zeroed else torch.empty
        return make(weight.shape, dtype=dtype, device=weight.device)
    pool = _pools.get(id(weight))
    if pool is None:
        pool = _pools[id(weight)] = []
        weakref.finalize(weight, _pools.pop, id(weight), None)
    # a weight cast or resized since (model.double(), ...) leaves buffers that no longer fit
    pool[:] = [b for b in pool if b.shape == weight.shape and b.dtype == dtype]
    for buf in pool:
        if _unshared(buf):
            if zeroed:
                buf.zero_()
            # a new tensor on the memory: while the caller holds it, the storage counts as in use
            # (references to the pool's own tensor object would not count)
            return buf.detach()
    buf = torch.zeros(weight.shape, dtype=dtype) if zeroed else torch.empty(weight.shape, dtype=dtype)
    if len(pool) < POOL_SIZE:
        pool.append(buf)
    return buf.detach()
