"""Fails CI when the build is not what this machine can build: the compiled kernels must load,
and when csrc/cuda sources exist and torch has CUDA, every op must have a CUDA kernel."""

import pathlib
import sys

import torch

import skelmae_ext
from skelmae_ext import _extension

OPS = [
    "masked_graph_conv",
    "masked_graph_conv_backward",
    "cosine_reconstruction_loss",
    "cosine_reconstruction_loss_backward",
]

status = skelmae_ext.EXTENSION
if not status.loaded:
    sys.exit(f"compiled kernels did not load: {status.reason}")
missing_cpu = [op for op in OPS if not _extension.has_kernel(op, "CPU")]
if missing_cpu:
    sys.exit(f"ops without a CPU kernel: {missing_cpu}")

cuda_sources = sorted(pathlib.Path("csrc/cuda").glob("*.cu"))
if cuda_sources and torch.version.cuda:
    if not status.built_with_cuda:
        sys.exit(f"{len(cuda_sources)} CUDA sources exist but the CUDA kernels were not built")
    missing_cuda = [op for op in OPS if not _extension.has_kernel(op, "CUDA")]
    if missing_cuda:
        sys.exit(f"ops without a CUDA kernel: {missing_cuda}")
    print(f"CUDA kernels registered for {len(OPS)} ops")
else:
    print(f"no CUDA build expected (CUDA sources: {len(cuda_sources)}, torch CUDA: {torch.version.cuda})")
print(f"CPU kernels registered for {len(OPS)} ops; torch {torch.__version__}")
