#!/usr/bin/env bash
# One-shot GPU verification of the wkv5 kernels (run from the repository root).
# Conformance for every kernel in fp32 and bf16, then the fwd+bwd benchmark.
# Needs a CUDA torch, triton, nvcc and ninja; RWKV_PLUG_CACHE may point at a
# writable folder for the compiled extension.
set -u
PY=${PY:-python}
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for dt in float32 bfloat16; do
  "$PY" -m rwkv_plug check-kernels -v --dtype "$dt" || status=1
done
"$PY" bench/kernels/bench_wkv_gpu.py "$@" || status=1
exit $status
