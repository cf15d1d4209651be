"""The triton kernel under Triton's CPU interpreter (TRITON_INTERPRET=1).

Triton reads TRITON_INTERPRET when its kernels are defined, so each check
runs in a fresh subprocess with the variable set before anything imports
triton. Shapes stay tiny (B*H <= 4, T <= 64) and dtypes fp32/fp64: the
interpreter is slow and gets bf16 wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow  # every test here takes seconds: fit runs, subprocesses or the Triton interpreter

pytest.importorskip("triton", reason="triton is an optional extra: pip install 'rwkv-plug[triton]'")


def _interpreted(code: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", RWKV_PLUG_PLUGINS="none", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_triton_conformance_under_the_interpreter():
    result = _interpreted("""
        import json, torch
        from rwkv_plug.kernels.conformance import check_kernel
        from rwkv_plug.kernels.select import resolve_kernel
        kernel = resolve_kernel("triton", "cpu", torch.float64)
        out = {}
        for dt in (torch.float64,):  # fp32 runs through the CLI test below
            rep = check_kernel(kernel, device="cpu", dtype=dt, heads=1, T=40)
            out[str(dt)] = [rep.passed, rep.format()]
        print(json.dumps(out))
    """)
    for dtype, (passed, text) in result.items():
        assert passed, text
        assert "ragged_T=35" in text and "T=1" in text and "batch_rows" in text


def test_check_kernels_cli_runs_triton_under_the_interpreter():
    out = run_cli("check-kernels", "--kernel", "triton", "-v", env={"TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    assert "triton     wkv5  PASS  [cpu, float32]" in out.stdout
    assert "triton     wkv7  PASS  [cpu, float32]" in out.stdout  # every op the kernel lists
    for check in ("forward+backward", "s0_grad", "sT_grad_only", "chained", "batch_rows", "T=1",
                  "decay_near_0", "decay_near_1"):
        assert f"ok   {check} " in out.stdout


def test_tiny_model_trains_to_the_same_losses_with_triton_and_torch():
    # Two layers, n_embd 128 (two heads of 64), two Adam steps from the same
    # weights; every weight is perturbed so the WKV gradients matter from step 0.
    result = _interpreted("""
        import json, torch
        from rwkv_plug.models import load_model
        from rwkv_plug.models.init import init_state_dict

        torch.manual_seed(0)
        sd = init_state_dict(2, 128, 61, seed=0, dtype=torch.float32)
        g = torch.Generator().manual_seed(1)
        sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
        idx = torch.randint(0, 61, (2, 18), generator=g)

        def train(kernel):
            model = load_model(sd, kernel=kernel)
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            losses, decay_grads = [], []
            state = None
            for step in range(2):
                logits, state = model(idx[:, :-1], None)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
                opt.zero_grad()
                loss.backward()
                decay_grads.append(model.blocks[1].att.time_decay.grad.abs().sum().item())
                opt.step()
                losses.append(loss.item())
            used = model.kernel_for(idx.device, torch.float32)
            return losses, decay_grads, [type(used).__name__]

        print(json.dumps({"torch": train("torch"), "triton": train("triton")}))
    """)
    (l_torch, g_torch, k_torch), (l_triton, g_triton, k_triton) = result["torch"], result["triton"]
    assert k_torch == ["TorchKernel"] and k_triton == ["TritonKernel"]
    assert l_torch[-1] < l_torch[0]  # it trains
    for a, b in zip(l_torch, l_triton):
        assert abs(a - b) <= 1e-5 * abs(a), (l_torch, l_triton)
    for a, b in zip(g_torch, g_triton):
        assert a > 0 and abs(a - b) <= 1e-3 * a, (g_torch, g_triton)


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_for_ampere_and_hopper_without_a_gpu(tmp_path, arch):
    # Lowered all the way to a cubin by Triton's own toolchain; a fresh cache
    # makes sure this really compiles.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), RWKV_PLUG_PLUGINS="none")
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "rwkv_plug.kernels.wkv5.triton_aot",
                          str(arch), "bf16"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert [line.split()[2] for line in lines] == ["fwd", "bwd_dr", "bwd_dk", "bwd_dv"]
    assert all(("REG:" in line or "cubin" in line) for line in lines), out.stdout
