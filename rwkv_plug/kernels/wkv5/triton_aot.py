"""Compile the triton wkv5 kernels for a GPU architecture without a GPU.

CI has no GPU, but Triton can still lower the kernels all the way to a
cubin for a given target. That catches compile errors (unsupported ops,
layouts, shared-memory overflow) before a GPU machine ever sees the code::

    python -m rwkv_plug.kernels.wkv5.triton_aot 90 bf16     # Hopper, bf16 inputs

Prints each kernel's register, stack (spill) and shared-memory use.
Must run without TRITON_INTERPRET (the interpreter replaces compilation).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from rwkv_plug.kernels.wkv5.triton import BK, BT, BV, NUM_WARPS

_PTR_INPUTS = {"r_ptr", "k_ptr", "v_ptr"}


def compile_kernels(arch: int, dtype: str = "bf16", head_size: int = 64) -> dict[str, str]:
    """Compile the four kernels for ``sm_<arch>``; returns name -> resource usage line."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rwkv_plug.kernels.wkv5 import triton_impl as ti

    is64 = dtype == "fp64"
    cdt = "fp64" if is64 else "fp32"
    base = dict(H=4, N=head_size, BT=BT, IS64=is64,
                PREC="ieee" if dtype in ("fp32", "fp64") else "tf32")
    kernels = {
        "fwd": (ti._fwd, dict(base, BV=min(BV, head_size), BK=16)),
        "bwd_dr": (ti._bwd_dr, dict(base, BK=min(BK, head_size))),
        "bwd_dk": (ti._bwd_dk, dict(base, BK=min(BK, head_size))),
        "bwd_dv": (ti._bwd_dv, dict(base, BV=min(BV, head_size), BK=16)),
    }
    usage = {}
    for name, (fn, consts) in kernels.items():
        sig = {}
        for arg in fn.arg_names:
            if arg in consts:
                sig[arg] = "constexpr"
            elif arg == "T":
                sig[arg] = "i32"
            else:
                sig[arg] = "*" + (dtype if arg in _PTR_INPUTS else cdt)
        constexprs = {(fn.arg_names.index(k),): v for k, v in consts.items()}
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": NUM_WARPS})
        usage[name] = _resource_usage(compiled.asm["cubin"])
    return usage


def _resource_usage(cubin: bytes) -> str:
    """The ``REG:.. STACK:..`` line from Triton's bundled cuobjdump, if present."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return f"cubin {len(cubin)} bytes"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, timeout=60).stdout
    finally:
        os.unlink(f.name)
    lines = [line.strip() for line in out.splitlines() if "REG:" in line]
    return lines[0] if lines else f"cubin {len(cubin)} bytes"


def main(argv: list[str]) -> None:
    arch = int(argv[0]) if argv else 90
    dtype = argv[1] if len(argv) > 1 else "bf16"
    for name, line in compile_kernels(arch, dtype).items():
        print(f"sm_{arch} {dtype} {name:<7} {line}")


if __name__ == "__main__":
    main(sys.argv[1:])
