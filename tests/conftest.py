"""Shared fixtures: devices and backends to run on (PyG's withCUDA idiom), graph inputs."""

import pytest
import torch

from skelmae_ext import ops

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def compiled_backends(device):
    """Backends other than the reference path that can run on `device`."""
    return [b for b in ops.available_backends(device) if b != "reference"]


# Every (device, compiled backend) pair available here: the kernels under test.
DEVICE_BACKENDS = [
    pytest.param(device, backend, id=f"{device.type}-{backend}")
    for device in DEVICES
    for backend in compiled_backends(device)
]

# (rtol, atol) against the reference path run in float64.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}


def seeded(seed):
    return torch.Generator().manual_seed(seed)
