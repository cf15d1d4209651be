"""Compile the triton wkv7 kernels for a GPU architecture without a GPU.

Like :mod:`rwkv_plug.kernels.wkv5.triton_aot`: Triton lowers the kernels to a
cubin for ``sm_<arch>``, which catches compile errors before a GPU machine
sees the code::

    python -m rwkv_plug.kernels.wkv7.triton_aot 90 bf16     # Hopper, bf16 inputs

Prints each kernel's register, stack (spill) and shared-memory use. Must run
without TRITON_INTERPRET (the interpreter replaces compilation).
"""

from __future__ import annotations

import sys

from rwkv_plug.kernels.wkv5.triton_aot import _resource_usage
from rwkv_plug.kernels.wkv7.triton import BV, BV_BWD, CH, NUM_WARPS

#: pointers in the input dtype; the decay comes in fp32 (fp64), as the model passes it
_PTR_INPUTS = {"r_ptr", "k_ptr", "v_ptr", "a_ptr", "b_ptr"}


def compile_kernels(arch: int, dtype: str = "bf16", head_size: int = 64) -> dict[str, str]:
    """Compile the forward and backward kernels for ``sm_<arch>``; name -> resource usage."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rwkv_plug.kernels.wkv7 import triton_impl as ti

    is64 = dtype == "fp64"
    cdt = "fp64" if is64 else "fp32"
    usage = {}
    for name, fn, bv in (("fwd", ti._fwd, BV), ("bwd", ti._bwd, BV_BWD)):
        consts = dict(H=4, N=head_size, BV=min(bv, head_size), CH=CH, IS64=is64)
        sig = {}
        for arg in fn.arg_names:
            if arg in consts:
                sig[arg] = "constexpr"
            elif arg == "T":
                sig[arg] = "i32"
            elif arg == "part_stride":
                sig[arg] = "i64"
            else:
                sig[arg] = "*" + (dtype if arg in _PTR_INPUTS else cdt)
        constexprs = {(fn.arg_names.index(k),): v for k, v in consts.items()}
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": NUM_WARPS})
        usage[name] = _resource_usage(compiled.asm["cubin"])
    return usage


def main(argv: list[str]) -> None:
    arch = int(argv[0]) if argv else 90
    dtype = argv[1] if len(argv) > 1 else "bf16"
    for name, line in compile_kernels(arch, dtype).items():
        print(f"sm_{arch} {dtype} wkv7 {name:<4} {line}")


if __name__ == "__main__":
    main(sys.argv[1:])
