#!/usr/bin/env bash
# Issue 17's GPU acceptance in one run (target: under 8 minutes on one H100/H200), from the repository root:
#
#   scripts/gpu_acceptance.sh [--device cuda|cpu] [--size full|small] [--out DIR] [--repeats N]
#
# On cuda (default --size full): checkpoints at FLUX.1-dev and Wan 2.1 1.3B DiT widths with reduced depth are
# built under DIR; per family: bf16 parity, `diffparity bench` eager and compiled (both sides), compile parity
# (`run --compile native`), capture overhead (native run with vs without recording). `--device cpu` (default
# --size small) runs the same steps on the tiny cases: the check that this script works, on a CPU.
# DIR defaults to $OUT (the device machine's output folder) or out/gpu-acceptance; everything lands in
# DIR/acceptance.json (plus each step's log, report and bench JSON). Exit: 0 every parity passes, 1 one fails,
# 2 a step could not run. PYTHON=... picks the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error
exec "${PYTHON:-.venv/bin/python}" scripts/gpu_acceptance.py "$@"
