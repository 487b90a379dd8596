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
    """The copies the CPU kernels' hot loops run ("avx2" or "baseline"; csrc/cpu/cpu_isa.h's
    choice), or None without the compiled kernels."""
    return ops.EXTENSION.cpu_isa or None


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
