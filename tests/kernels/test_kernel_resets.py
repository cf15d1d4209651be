"""State resets inside one WKV call (packed records): == running each segment separately.

fp64, forward and every gradient (inputs, s0, the reset state), for wkv5 and wkv7,
the chunked torch kernels and the per-step references; and the refusals.
"""

from __future__ import annotations

import pytest
import torch

from rwkv_plug.core.errors import KernelError
from rwkv_plug.kernels.select import resolve_kernel
from rwkv_plug.kernels.wkv5.reference import wkv5_recurrent
from rwkv_plug.kernels.wkv5.torch_chunked import wkv5_chunked
from rwkv_plug.kernels.wkv7.reference import wkv7_recurrent
from rwkv_plug.kernels.wkv7.torch_chunked import wkv7_chunked

B, H, N = 2, 2, 8
DT = torch.float64
# row 0: segments [0, 32) [32, 96) [96, 101); row 1: [0, 64) [64, 101). T is ragged on purpose.
T = 101
STARTS = ([32, 96], [64])


def _flags(starts_per_row=STARTS, T: int = T) -> torch.Tensor:
    f = torch.zeros(len(starts_per_row), T, dtype=torch.bool)
    for b, starts in enumerate(starts_per_row):
        f[b, starts] = True
    return f


def _inputs(op: str, seed: int = 0, B: int = B, T: int = T):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=DT)  # noqa: E731
    s0, fresh = rnd(B, H, N, N), rnd(B, H, N, N)
    if op == "wkv5":
        w = torch.rand(H, N, generator=g, dtype=DT) * 0.9 + 0.05
        xs = [rnd(B, T, H, N) * 0.5 for _ in range(3)] + [w, rnd(H, N)]  # r k v w u
    else:
        kk = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
        a = torch.rand(B, T, H, N, generator=g, dtype=DT)
        w = torch.rand(B, T, H, N, generator=g, dtype=DT) * 0.45 + 0.55
        xs = [rnd(B, T, H, N) * 0.5, w, rnd(B, T, H, N) * 0.5, rnd(B, T, H, N) * 0.5, -kk, kk * a]  # r w k v a b
    return [x.requires_grad_() for x in (*xs, s0, fresh)]


def _segmented(op: str, xs, starts_per_row=STARTS):
    """Each row's segments run one by one: the first from s0, the others from ``fresh``."""
    *ins, s0, fresh = xs
    T = ins[0].shape[1]
    ref = wkv5_recurrent if op == "wkv5" else wkv7_recurrent
    per_t = (0, 1, 2) if op == "wkv5" else (0, 1, 2, 3, 4, 5)
    ys, finals = [], []
    for b, starts in enumerate(starts_per_row):
        bounds = [0, *starts, T]
        state, parts = s0[b : b + 1], []
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if i > 0:
                state = fresh[b : b + 1]
            if hi == lo:  # a reset at token 0: the segment from s0 is empty
                continue
            seg = [x[b : b + 1, lo:hi] if j in per_t else x for j, x in enumerate(ins)]
            y, state = ref(*seg, state)
            parts.append(y)
        ys.append(torch.cat(parts, dim=1))
        finals.append(state)
    return torch.cat(ys), torch.cat(finals)


def _grads(y, sT, xs, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    gy, gs = torch.randn(y.shape, generator=g, dtype=DT), torch.randn(sT.shape, generator=g, dtype=DT)
    return torch.autograd.grad((y * gy).sum() + (sT * gs).sum(), xs, allow_unused=True)


KERNELS = {
    "wkv5": {"chunked": lambda *a, chunk=32, **kw: wkv5_chunked(*a, chunk=chunk, **kw),
             "reference": wkv5_recurrent},
    "wkv7": {"chunked": lambda *a, chunk=16, **kw: wkv7_chunked(*a, chunk=chunk, **kw),
             "reference": wkv7_recurrent},
}


@pytest.mark.parametrize("op", ["wkv5", "wkv7"])
@pytest.mark.parametrize("form", ["chunked", "reference"])
def test_resets_equal_segments_run_alone(op, form):
    xs = _inputs(op)
    *ins, s0, fresh = xs
    y, sT = KERNELS[op][form](*ins, s0, resets=_flags(), s_reset=fresh)
    y_ref, sT_ref = _segmented(op, xs)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sT, sT_ref, rtol=1e-10, atol=1e-10)
    # the carried s0 reaches only the first segments; fresh only the others: both grads are exact
    for g, g_ref in zip(_grads(y, sT, xs), _grads(y_ref, sT_ref, xs)):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


# chunk 8, T = 75 (nine full chunks and a tail): row 0 resets at token 0, in three adjacent
# chunks (0, 8, 16) and at the tail's start; row 1 twice in a row mid-sequence; row 2 never.
# Nine chunks take four doubling steps of the chunk scan, so every span of it meets a reset.
MANY_STARTS = ([0, 8, 16, 40, 72], [24, 32, 64], [])


@pytest.mark.parametrize("op", ["wkv5", "wkv7"])
def test_many_resets_equal_the_row_split_at_them(op):
    T8 = 75
    xs = _inputs(op, seed=5, B=3, T=T8)
    *ins, s0, fresh = xs
    y, sT = KERNELS[op]["chunked"](*ins, s0, resets=_flags(MANY_STARTS, T8), s_reset=fresh, chunk=8)
    y_ref, sT_ref = _segmented(op, xs, MANY_STARTS)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sT, sT_ref, rtol=1e-10, atol=1e-10)
    grads, grads_ref = _grads(y, sT, xs), _grads(y_ref, sT_ref, xs)
    names = ("r", "k", "v", "w", "u") if op == "wkv5" else ("r", "w", "k", "v", "a", "b")
    for name, g, g_ref in zip((*names, "s0", "fresh"), grads, grads_ref):
        assert g is not None and g_ref is not None, name
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10, msg=lambda m: f"d{name}: {m}")
    # row 0 resets at token 0: nothing of s0 reaches its outputs; rows 1 and 2 do use s0
    assert grads[-2][0].abs().max() == 0 and grads[-2][1:].abs().amax((1, 2, 3)).min() > 0


@pytest.mark.parametrize("op", ["wkv5", "wkv7"])
def test_reset_to_zeros_without_a_reset_state(op):
    xs = _inputs(op, seed=3)
    *ins, s0, fresh = xs
    y, _ = KERNELS[op]["chunked"](*ins, s0, resets=_flags())
    with torch.no_grad():
        fresh.zero_()
    y_ref, _ = _segmented(op, xs)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    # and a reset does change the output: the flags are not ignored
    y_carry, _ = KERNELS[op]["chunked"](*ins, s0)
    assert (y_carry - y).abs().max() > 1e-3


@pytest.mark.parametrize("op", ["wkv5", "wkv7"])
def test_a_reset_off_the_chunk_grid_is_refused(op):
    *ins, s0, _ = _inputs(op)
    flags = torch.zeros(B, T, dtype=torch.bool)
    flags[1, 40] = True
    with pytest.raises(KernelError, match="packing_align"):
        KERNELS[op]["chunked"](*ins, s0, resets=flags)


def test_a_kernel_without_resets_is_refused_by_name_and_skipped_by_auto(monkeypatch, capsys):
    from rwkv_plug.core.hookspecs import hookimpl
    from rwkv_plug.core.interfaces import Kernel, KernelCaps
    from rwkv_plug.testing import registered_plugin

    class NoResets(Kernel):
        """A fast kernel that cannot reset (test)."""

        name = "noresets"
        caps = KernelCaps(dtypes=("float64",), devices=("cpu",), speed_rank=99, ops=("wkv5",))

        def wkv5(self, r, k, v, w, u, s0):
            return wkv5_recurrent(r, k, v, w, u, s0)

    class Plugin:
        @staticmethod
        @hookimpl
        def register_kernels():
            return [NoResets]

    monkeypatch.setattr("rwkv_plug.kernels.selfcheck.failure", lambda *a, **k: None)
    with registered_plugin(Plugin, "noresets-test"):
        refused = r"^model.kernel 'noresets' cannot reset the state .*packing_state: carry"
        with pytest.raises(KernelError, match=refused):
            resolve_kernel("noresets", "cpu", DT, resets=True)
        assert resolve_kernel("auto", "cpu", DT).name == "noresets"
        assert resolve_kernel("auto", "cpu", DT, resets=True).name == "torch"
        # never silent: auto says why it passed the faster kernel over
        assert "noresets: cannot reset the state" in capsys.readouterr().err
