#!/usr/bin/env bash
# Creates .venv and installs diffparity with its test tools at the versions of requirements.lock, so every fresh
# machine gets the same environment. Idempotent: a second run takes seconds (and brings a drifted .venv back to
# the lock). torch is the locked version: the CPU build on a machine without an NVIDIA driver (so nothing pulls a
# multi-GB CUDA build), pip's default CUDA build of that version where `nvidia-smi` exists.
# Move the lock forward with `python scripts/upgrade_lock.py --write` (docs/setup-and-lock.md).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
LOCK=requirements.lock
START=$SECONDS
say() { echo "setup.sh: $*"; }

TORCH_VERSION=$(sed -n 's/^torch==//p' "$LOCK")
[ -n "$TORCH_VERSION" ] || { echo "setup.sh: $LOCK names no torch version" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
installed=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$installed" != "$TORCH_VERSION" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    say "installing torch $TORCH_VERSION (CUDA build; a few GB, several minutes)"
    .venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION"
  else
    say "installing torch $TORCH_VERSION (CPU build)"
    .venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION" \
      || .venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
say "installing diffparity and its dependencies at the versions of $LOCK ($(grep -c '==' "$LOCK") packages)"
.venv/bin/python -m pip install --quiet -c "$LOCK" -e ".[test]" >.venv/setup.log 2>&1 \
  || { cat .venv/setup.log >&2; echo "setup.sh: pip install failed (log above)" >&2; exit 1; }
say "checking the installation"
.venv/bin/python -c "import diffusers, transformers, torch, harness, native_models, references" \
  || { echo "setup.sh: installation incomplete" >&2; exit 1; }
say "done in $((SECONDS - START)) s: .venv/bin/diffparity --help"
