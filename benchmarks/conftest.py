"""Benchmark helpers: providers, result checks and derived figures (pytest-benchmark)."""

import pytest
import torch

import skelmae_reference
from skelmae_ext import ops


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


def record(benchmark, bytes_moved, **info):
    """Adds bytes moved and GB/s (from the median) to the benchmark's extra_info."""
    benchmark.extra_info.update(info)
    benchmark.extra_info["bytes_moved"] = bytes_moved
    median = benchmark.stats.stats.median
    benchmark.extra_info["GB/s"] = round(bytes_moved / median / 1e9, 2)


def run(benchmark, step, rounds):
    return benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=3)


@pytest.fixture(scope="session")
def rounds(request):
    return 5 if request.config.getoption("-m") == "quick" else 20
