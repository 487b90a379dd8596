"""What a run ran on: versions, the kernels active, the CPU's vector ISA and the GPUs (the run
record, the checkpoints' ``versions`` and ``skelmae info``)."""

import importlib.metadata
import os
import platform
import sys

import numpy as np
import torch

from .. import __version__, ops


def versions():
    """Versions of Python, torch (and its CUDA), numpy and skelmae_ext."""
    return {"python": platform.python_version(), "torch": str(torch.__version__), "cuda": torch.version.cuda,
            "numpy": np.__version__, "skelmae_ext": __version__}


def kernels(device):
    """Which implementation the models' ops run on ``device`` (the "auto" backend), and why the
    compiled kernels are off if they are."""
    extension = ops.EXTENSION
    return {"backend": ops.available_backends(device)[0], "available": ops.available_backends(device),
            "extension_loaded": extension.loaded, "extension_reason": extension.reason or None}


def kernel_isa():
    """The vector instructions the CPU kernels' hot loops use (csrc/cpu/cpu_isa.h's choice)."""
    if os.environ.get("SKELMAE_CPU_BASELINE") is not None:
        return "baseline x86-64 (SKELMAE_CPU_BASELINE set)"
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((set(line.split(":", 1)[1].split()) for line in handle if line.startswith("flags")), set())
    return "avx2+fma" if {"avx2", "fma"} <= flags else "baseline x86-64"


def info():
    """``skelmae info``: versions, Triton, backends and kernels per device, the CPU, the GPUs."""
    triton = ops.TRITON
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    gpus = [{"name": torch.cuda.get_device_name(i), "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())]
    devices = ["cpu"] + (["cuda"] if gpus else [])
    return dict(versions(), executable=sys.executable, triton=triton_version,
                triton_kernels="loaded" if triton.loaded else triton.reason,
                kernels={device: kernels(device) for device in devices},
                cpu={"machine": platform.machine(), "cores": os.cpu_count(),
                     "torch_capability": torch.backends.cpu.get_cpu_capability(), "kernel_loops": kernel_isa(),
                     "threads": torch.get_num_threads()},
                gpus=gpus)
