"""Benchmark helpers: devices, providers, result checks and derived figures (pytest-benchmark)."""

import pytest
import torch

import skelmae_reference
from skelmae_ext import ops


# The CPU always; the GPU where one is visible.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def providers(device="cpu"):
    """The reference path eager and compiled, then every compiled backend on the device."""
    compiled = [b for b in ops.available_backends(device) if b != "reference"]
    return ["reference", "reference-compiled"] + compiled


def op_for(provider, name):
    """A callable of the op `name` for a provider: the same signature as skelmae_ext.ops."""
    if provider.startswith("reference"):
        function = getattr(skelmae_reference, name)
        return torch.compile(function) if provider == "reference-compiled" else function
    public = getattr(ops, name)
    return lambda *args, **kwargs: public(*args, **kwargs, backend=provider)


def assert_matches(result, expected, what):
    """A fast wrong kernel must not be reported: check before timing."""
    for got, want in zip(result, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: {m}")


def record(benchmark, bytes_moved, device, **info):
    """Adds bytes moved, GB/s (from the median) and the device to the benchmark's extra_info."""
    benchmark.extra_info.update(info)
    if device == "cuda":
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.extra_info["bytes_moved"] = bytes_moved
    median = benchmark.stats.stats.median
    benchmark.extra_info["GB/s"] = round(bytes_moved / median / 1e9, 2)


def run(benchmark, step, rounds, device):
    """Times step; on the GPU each round waits for the kernels to finish."""

    def timed():
        result = step()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    return benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=3)


@pytest.fixture(scope="session")
def rounds(request):
    return 5 if request.config.getoption("-m") == "quick" else 20
