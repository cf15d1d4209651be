#!/usr/bin/env bash
# `make demo`: init-model -> fit -> export -> generate, on the CPU, in a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(cd "${1:-.venv/bin}" && pwd)
cd examples  # demo.yaml's paths are relative to this folder; everything lands in examples/out/demo
rm -rf out/demo/run out/demo/model.pth

echo "== 1. a tiny world-vocab model (2 layers, n_embd 128)"
"$BIN/rwkv-plug" init-model --n_layer 2 --n_embd 128 --vocab_size world --skip-if-exists \
    out/demo/L2-D128-world-init.pth

echo "== 2. the config, checked as fit reads it (and, with --strict, the model file), then what the"
echo "      model will learn from (trained tokens in colour, chunk cuts marked)"
"$BIN/rwkv-plug" check demo.yaml --strict
"$BIN/rwkv-plug" inspect demo.yaml --samples 1 --max-tokens 40

echo "== 3. train: 40 steps, 512-token samples in 128-token chunks"
"$BIN/rwkv-plug" fit demo.yaml

"$BIN/python" - <<'PY'
import csv, glob
rows = []
for path in sorted(glob.glob("out/demo/run/logs/*/metrics.csv")):
    with open(path) as f:
        rows += [r for r in csv.DictReader(f) if r.get("train/loss")]
losses = [float(r["train/loss"]) for r in rows]
if len(losses) >= 2:
    print(f"train/loss: first {losses[0]:.3f} -> last {losses[-1]:.3f}")
PY

echo "== 4. export the last checkpoint to an official RWKV-LM x052 file"
"$BIN/rwkv-plug" export out/demo/run/checkpoints/last.ckpt out/demo/model.pth

echo "== 5. generate"
"$BIN/rwkv-plug" generate out/demo/model.pth --prompt $'Story 7.\nAda' --max-tokens 48 \
    --temperature 0.8 --top-p 0.7 --seed 1
echo
