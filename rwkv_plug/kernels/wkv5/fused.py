"""Autograd glue shared by the fused wkv5 kernels (triton, cuda).

A fused backend computes only the *state part* of wkv5 (``y_t = r_t S_t``
and the final state) and its gradients for r, k, v and s0, honouring the
gradient flowing into ``sT``. Two things are left to this module:

* the bonus of the current token, ``(r_t . u * k_t) v_t``, which is plain
  elementwise torch and so differentiated by autograd;
* the decay gradient, recovered from the other gradients. Writing the
  decay as ``w = exp(lw)`` and ``Lambda_t = t * lw``, every place ``w``
  enters the state part is a factor ``exp(Lambda_t)`` on ``r_t``, a factor
  ``exp(-Lambda_(s+1))`` on ``k_s``, or ``exp(Lambda_T)`` on ``sT``. So::

      dlw[k] = sum_t t r_t[k] dr_t[k] - sum_s (s+1) k_s[k] dk_s[k]
               + T sum_v sT[k, v] dsT[k, v]          (summed over the batch)

  with ``dr``/``dk`` the state-part gradients, and ``dw = dlw / w``. The
  terms at distance zero cancel between the sums, so the absolute error of
  ``dlw`` is about machine epsilon times the size of those terms; ``dw``
  for decays near zero (below ~1e-4 in fp32) inherits that error scaled
  by ``1/w``. The model's parameter gradient is ``dlw`` times ``-exp(theta)``
  and is unaffected.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from rwkv_plug.kernels.precision import compute_dtype
from rwkv_plug.kernels.wkv5.reference import check_shapes


class StateBackend(Protocol):
    """What a fused kernel provides: the state part of wkv5 and its backward.

    All tensors are contiguous; ``r, k, v, dy`` are ``(B, T, H, N)``, ``lw``
    is ``log(w)`` as ``(H, N)`` and states are ``(B, H, N, N)``, in the
    compute dtype (fp32, or fp64 for fp64 inputs) except ``r, k, v``, which
    keep the caller's dtype (bf16 stays bf16 in memory).
    """

    def forward(self, r: Tensor, k: Tensor, v: Tensor, lw: Tensor, s0: Tensor
                ) -> tuple[Tensor, Tensor]: ...

    def backward(self, r: Tensor, k: Tensor, v: Tensor, lw: Tensor, s0: Tensor,
                 dy: Tensor, dsT: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


def decay_grad(r: Tensor, k: Tensor, dr: Tensor, dk: Tensor, sT: Tensor, dsT: Tensor,
               w: Tensor) -> Tensor:
    """``dL/dw`` (H, N) from the state-part gradients; see the module docstring."""
    T = r.shape[1]
    t = torch.arange(T, device=r.device, dtype=dr.dtype).view(1, T, 1, 1)
    dlw = (t * r.to(dr.dtype) * dr).sum((0, 1)) - ((t + 1) * k.to(dk.dtype) * dk).sum((0, 1))
    dlw = dlw + T * (sT * dsT).sum((0, 3))
    return dlw / w.to(dlw.dtype)


class _StateOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, backend, r, k, v, w, s0):
        cdt = compute_dtype(r.dtype)
        lw = torch.log(w.to(cdt)).contiguous()
        s0c = s0.to(cdt).contiguous()
        y, sT = backend.forward(r, k, v, lw, s0c)
        ctx.backend = backend
        ctx.s0_dtype = s0.dtype
        ctx.save_for_backward(r, k, v, w, lw, s0c, sT)
        return y, sT

    @staticmethod
    def backward(ctx, dy, dsT):
        r, k, v, w, lw, s0c, sT = ctx.saved_tensors
        dy = sT.new_zeros(r.shape) if dy is None else dy.to(sT.dtype)
        dsT = torch.zeros_like(sT) if dsT is None else dsT.to(sT.dtype)
        dr, dk, dv, ds0 = ctx.backend.backward(
            r, k, v, lw, s0c, dy.contiguous(), dsT.contiguous()
        )
        dw = decay_grad(r, k, dr, dk, sT, dsT, w)
        return (None, dr.to(r.dtype), dk.to(k.dtype), dv.to(v.dtype), dw.to(w.dtype),
                ds0.to(ctx.s0_dtype))


def fused_wkv5(backend: StateBackend, r, k, v, w, u, s0):
    """wkv5 through a fused state backend plus the autograd bonus term."""
    check_shapes(r, k, v, w, u, s0)
    cdt = compute_dtype(r.dtype)
    r_, k_, v_ = (x.contiguous() for x in (r, k, v))
    y, sT = _StateOp.apply(backend, r_, k_, v_, w, s0)
    H, N = w.shape
    bonus = (r_.to(cdt) * u.to(cdt).view(1, 1, H, N) * k_.to(cdt)).sum(-1, keepdim=True)
    y = y + bonus * v_.to(cdt)
    return y.to(r.dtype), sT
