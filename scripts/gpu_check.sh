#!/usr/bin/env bash
# The GPU check (docs/gpu.md): builds for the GPU at hand (or checks a carried
# build), tests, sanitizes, benchmarks and profiles the kernels on a machine with an NVIDIA GPU,
# in at most 5 minutes, without network. Stages, commands and time budgets: scripts/gpu_check.py.
#   bash scripts/gpu_check.sh [OUT_DIR] [--prebuilt] [--bundle DIR] [--stages a,b] [--budget stage=s] [--dry-run]
# OUT_DIR (default gpu-check-out/) is relative to the repository root. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
