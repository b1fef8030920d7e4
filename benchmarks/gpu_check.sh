#!/usr/bin/env bash
# The GPU check of issue 14, under 5 minutes on one GPU: bf16-mixed training throughput of the backbone and the flow
# head on a 1M-cell x 2,000-gene file read from disk, peak GPU memory, and 20-step vs K=2 prediction timing.
# Writes benchmarks/results/gpu_check.json (benchmarks/gpu_check.py says what each number is).
#
#   bash benchmarks/gpu_check.sh                  # on a machine with a CUDA GPU
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh  # the same code on the CPU, tiny sizes (JSON to /tmp)
#
# Knobs (environment): GPU_CHECK_CELLS (1000000), GPU_CHECK_GENES (2000), GPU_CHECK_STEPS (200 timed steps per fit),
# GPU_CHECK_BATCH (64,1024), GPU_CHECK_WORKERS (4 DataLoader workers), GPU_CHECK_DIR (/tmp/scfate-gpu-check: the
# file, written once and reused), GPU_CHECK_OUT (the JSON), GPU_CHECK_TIMEOUT (290 s).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

if [ "${GPU_CHECK_DRY:-0}" != "1" ]; then
  # fail in a second, not after writing a 1M-cell file: no GPU, or a CPU-only torch build
  if ! "$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
    sys.exit(f"gpu_check: no GPU ({why}; torch {torch.__version__}). Run it on a machine with a CUDA GPU, "
             "or GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh for the CPU dry run.")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
  then
    exit 2
  fi
fi

# the whole check is bounded: a stuck reader or a slow disk ends as a timeout (exit 124), not as a held machine
exec timeout --signal=TERM --kill-after=10 "${GPU_CHECK_TIMEOUT:-290}" "$PY" benchmarks/gpu_check.py
