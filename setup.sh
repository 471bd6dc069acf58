#!/usr/bin/env bash
# Creates .venv and installs diffparity with its test tools. Idempotent: a second run takes seconds.
# On a machine without an NVIDIA driver it pins the CPU build of torch first, so nothing pulls a
# multi-GB CUDA build; with a driver (nvidia-smi present) it takes pip's default CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet torch
  else
    .venv/bin/python -m pip install --quiet "torch==2.13.0" \
      || .venv/bin/python -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
.venv/bin/python -m pip install --quiet -e ".[test]" >.venv/setup.log 2>&1 \
  || { cat .venv/setup.log >&2; echo "setup.sh: pip install failed (log above)" >&2; exit 1; }
.venv/bin/python -c "import diffusers, transformers, torch, harness, native_models, references" \
  || { echo "setup.sh: installation incomplete" >&2; exit 1; }
