"""What the op tests share: devices and backends to run on (PyG's withCUDA idiom), tolerances, seeds.

The Triton backend runs on CPU tensors only in Triton's interpreter, which a separate process
turns on before triton is imported: `TRITON_INTERPRET=1 pytest tests/ -m triton` (.ci/run).
The interpreter is slow, so tests shrink their largest sizes there (`size_for`)."""

import contextlib

import pytest
import torch

from skelmae_ext import ops

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def compiled_backends(device):
    """Backends other than the reference path that can run on `device`."""
    return [b for b in ops.available_backends(device) if b != "reference"]


# Every (device, compiled backend) pair available here: the kernels under test.
DEVICE_BACKENDS = [
    pytest.param(
        device, backend, id=f"{device.type}-{backend}",
        marks=[pytest.mark.triton] * (backend == "triton") + [pytest.mark.gpu] * (device.type == "cuda"),
    )
    for device in DEVICES
    for backend in compiled_backends(device)
]


def interpreted(device, backend):
    """Whether the kernels under test run in Triton's CPU interpreter."""
    return backend == "triton" and device.type == "cpu"


def size_for(device, backend, size, interpreted_size):
    """`size`, or the smaller `interpreted_size` where the kernels run in the interpreter."""
    return interpreted_size if interpreted(device, backend) else size


def tracing_context(device, backend):
    """The context to trace the ops in (torch.compile, opcheck's AOT dispatch test).

    On a GPU, AOTAutograd decomposes a triton_op into its launch function so that Inductor
    compiles the kernels itself; that runs the launch function on fake tensors, which
    interpreted kernels cannot take. In the interpreter the ops therefore stay opaque custom
    ops: tracing without graph breaks, the fake kernels and autograd are still checked."""
    if interpreted(device, backend):
        return torch._functorch.config.patch(decompose_custom_triton_ops=False)
    return contextlib.nullcontext()

# (rtol, atol) against the reference path run in float64.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}


def seeded(seed):
    return torch.Generator().manual_seed(seed)
