"""pytest plugin for the GPU check's dry run (`-p as_if_gpu`, scripts/ on PYTHONPATH): torch
answers that a CUDA GPU is visible, so that collection lists the GPU parametrizations (tests'
DEVICE_BACKENDS, the benchmarks' "on cuda" groups) on a machine without one. For
`--collect-only` only: a test run with it would launch work on a GPU that is not there."""

import torch

# Before tests/helpers.py and skelmae_ext are imported: both ask at import time.
torch.cuda.is_available = lambda: True
