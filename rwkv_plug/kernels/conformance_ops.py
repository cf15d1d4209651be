"""What the conformance suite needs to know about each op: arguments, reference, inputs.

:mod:`.conformance` runs the same checks on every op; an :class:`OpSpec` tells
it the call order of the op's arguments, which ones carry a token axis (cut
when chaining calls) or a batch axis (cut per row), which ones are rounded
to the tested dtype, the fp64 reference and how to draw test inputs.
Decays are drawn as ``exp(-exp(theta))`` with ``theta`` in a range: the
default spans ``exp(-exp(-6))`` (slow) to ``exp(-exp(2))`` (~6e-4, fast), as
in trained models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: ``theta`` ranges of the decay checks: the default, near 0 (down to ~2e-24), near 1.
DECAY_DEFAULT = (-6.0, 2.0)
DECAY_NEAR_0 = (2.0, 4.0)
DECAY_NEAR_1 = (-12.0, -8.0)


@dataclass(frozen=True)
class OpSpec:
    """One op as the conformance suite sees it."""

    name: str
    #: argument names in call order; the last one is the initial state ``s0``
    args: tuple[str, ...]
    #: arguments shaped ``(B, T, ...)``: cut along T when chaining calls
    token_args: tuple[str, ...]
    #: arguments rounded to the tested dtype (the rest stay fp32, fp64 for fp64)
    low_args: tuple[str, ...]
    #: the fp64 per-step spec, ``reference(*args) -> (y, sT)``
    reference: Callable
    #: ``inputs(B, T, H, N, seed, theta) -> {arg: fp64 tensor, "gy": ..., "gs": ...}``
    inputs: Callable[..., dict[str, Tensor]]
    #: whether the suite also runs the near-0 / near-1 decay checks
    decay_checks: bool = False

    @property
    def row_args(self) -> tuple[str, ...]:
        """Arguments with a batch axis (per-row gradients); the others are shared."""
        return (*self.token_args, self.args[-1])

    @property
    def grad_names(self) -> tuple[str, ...]:
        return tuple(f"d{a}" for a in self.args)


def _gen(seed: int):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    return g, rnd


def _wkv5_inputs(B: int, T: int, H: int, N: int, seed: int,
                 theta: tuple[float, float] = DECAY_DEFAULT) -> dict[str, Tensor]:
    """fp64 wkv5 inputs on CPU; each row of s0 differs, decays are per channel."""
    g, rnd = _gen(seed)
    th = torch.linspace(*theta, H * N, dtype=torch.float64).view(H, N)
    th = th[:, torch.randperm(N, generator=g)]  # fast and slow channels mixed
    return {
        "r": rnd(B, T, H, N, scale=0.5), "k": rnd(B, T, H, N, scale=0.5),
        "v": rnd(B, T, H, N, scale=0.5), "w": torch.exp(-torch.exp(th)),
        "u": rnd(H, N, scale=0.5), "s0": rnd(B, H, N, N),
        "gy": rnd(B, T, H, N), "gs": rnd(B, H, N, N),
    }


def _wkv7_inputs(B: int, T: int, H: int, N: int, seed: int,
                 theta: tuple[float, float] = DECAY_DEFAULT) -> dict[str, Tensor]:
    """fp64 wkv7 inputs shaped like the model's: ``a = -kk``, ``b = kk * gate``, kk unit per head.

    Decays are per token and channel, ``theta`` uniform in its range.
    """
    g, rnd = _gen(seed)
    th = theta[0] + (theta[1] - theta[0]) * torch.rand(B, T, H, N, generator=g, dtype=torch.float64)
    kk = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
    gate = torch.rand(B, T, H, N, generator=g, dtype=torch.float64)
    return {
        "r": rnd(B, T, H, N, scale=0.5), "w": torch.exp(-torch.exp(th)),
        "k": rnd(B, T, H, N, scale=0.5), "v": rnd(B, T, H, N, scale=0.5),
        "a": -kk, "b": kk * gate, "s0": rnd(B, H, N, N),
        "gy": rnd(B, T, H, N), "gs": rnd(B, H, N, N),
    }


def _wkv5_reference(*args):
    from rwkv_plug.kernels.wkv5.reference import wkv5_recurrent

    return wkv5_recurrent(*args)


def _wkv7_reference(*args):
    from rwkv_plug.kernels.wkv7.reference import wkv7_recurrent

    return wkv7_recurrent(*args)


OPS: dict[str, OpSpec] = {
    "wkv5": OpSpec("wkv5", args=("r", "k", "v", "w", "u", "s0"), token_args=("r", "k", "v"),
                   low_args=("r", "k", "v"), reference=_wkv5_reference, inputs=_wkv5_inputs),
    # w stays fp32 for bf16 r/k/v/a/b: the model computes its decay in fp32
    "wkv7": OpSpec("wkv7", args=("r", "w", "k", "v", "a", "b", "s0"),
                   token_args=("r", "w", "k", "v", "a", "b"), low_args=("r", "k", "v", "a", "b"),
                   reference=_wkv7_reference, inputs=_wkv7_inputs, decay_checks=True),
}
