#!/usr/bin/env bash
# The GPU check (docs/gpu.md): builds, tests, sanitizes and benchmarks the kernels
# on a machine with an NVIDIA GPU, in under 8 minutes, without network. Stages, commands and
# time budgets: scripts/gpu_check.py.
#   bash scripts/gpu_check.sh [OUT_DIR] [--bundle DIR] [--stages a,b] [--budget stage=s] [--dry-run]
# OUT_DIR (default gpu-check-out/) is relative to the repository root. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
