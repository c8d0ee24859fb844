#!/usr/bin/env bash
# The GPU check of #19 (item 5): ResNet50 at 224 px with mixed precision through the trainer's own loop
# against a bare model.fit on the same card, and the 2-GPU MirroredStrategy pair where there are two GPUs.
# Prints images/s for each and the ratio (bench/gpu.py). Exits 2 with a message where there is no GPU.
#
#   bench/gpu.sh                 # from the repository root, with the project's virtual environment
#   bench/gpu.sh --batch 64      # a smaller batch for a card with less memory
#   PYTHON=python3 bench/gpu.sh  # another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gpu.sh: no Python at $PYTHON; set PYTHON=/path/to/python (with TensorFlow installed)" >&2
  exit 2
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu.sh: no GPU: nvidia-smi is missing or sees no device, so the GPU check did not run." >&2
  echo "gpu.sh: run it on a machine with an NVIDIA GPU; 'python -m bench.gpu --smoke' checks the code path on a CPU." >&2
  exit 2
fi
nvidia-smi -L
export PYTHONPATH=".:gen/python${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m bench.gpu "$@"
