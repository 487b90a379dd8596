"""Benchmark helpers: devices, providers, result checks and derived figures (pytest-benchmark)."""

import ctypes
import gc

import pytest
import torch

import skelmae_reference
from skelmae_ext import ops

COPY_ELEMENTS = 16384 * 17 * 64 * 2  # float32: a 142 MB tensor, larger than any cache


# The CPU always; the GPU where one is visible.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def on(device):
    """Group name suffix: CPU groups keep their names."""
    return "" if device == "cpu" else f" on {device}"


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


def assert_matches(result, expected, what, scale=None):
    """A fast wrong kernel must not be reported: check before timing. Tolerance 1e-4 relative
    to `scale` (default: each expected tensor's largest magnitude)."""
    assert len(result) == len(expected), what
    for got, want in zip(result, expected):
        size = scale if scale is not None else float(want.detach().abs().max()) if want.numel() else 0.0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(size, 1e-3),
                                   msg=lambda m: f"{what}: {m}")


# Copy GB/s per device, from this run's "memory bandwidth" benchmark (which runs first): the one
# measurement behind every fraction_of_copy.
COPY_GBPS = {}


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: getattr(item, "originalname", "") != "test_copy_bandwidth")  # stable


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    """A run stopped by Ctrl-C or a time limit (scripts/gpu_check.py sends SIGINT) still writes
    --benchmark-json for the benchmarks that finished: pytest-benchmark would fail on the one cut
    short, which has no rounds (its stats are falsy), and write nothing."""
    benchmark_session = getattr(session.config, "_benchmarksession", None)
    if benchmark_session is not None:
        benchmark_session.benchmarks = [b for b in benchmark_session.benchmarks if b]
    yield


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def record(benchmark, bytes_moved=None, device="cpu", **info):
    """Adds derived figures to extra_info: the device, GB/s (from the median) and its fraction
    of this run's copy bandwidth on the device, when bytes_moved is given. Returns the GB/s."""
    benchmark.extra_info.update(info)
    if device == "cuda":
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
    if bytes_moved is None:
        return None
    gbps = bytes_moved / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update({"bytes_moved": bytes_moved, "GB/s": round(gbps, 2)})
    if device in COPY_GBPS:
        benchmark.extra_info["copy_GB/s"] = round(COPY_GBPS[device], 2)
        benchmark.extra_info["fraction_of_copy"] = round(gbps / COPY_GBPS[device], 3)
    return gbps


def run(benchmark, step, rounds, device="cpu", warmup_rounds=5):
    """Times step; on the GPU each round waits for the kernels to finish."""

    def timed():
        result = step()
        synchronize(device)
        return result

    return benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)


@pytest.fixture(scope="session")
def rounds(request):
    return 5 if request.config.getoption("-m") == "quick" else 15


class PeakMemory:
    """Peak memory of the work inside the block: max_memory_allocated on CUDA; on the CPU, the
    peak resident set size (Linux VmHWM, reset on entry after returning freed heap memory and
    skelmae_ext's idle CPU output buffers to the system) above the resident size at entry.
    The block's own cached buffers count; those left by earlier benchmarks do not."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.peak_bytes = 0

    @staticmethod
    def _status(field):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {field}")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            gc.collect()
            ops.empty_cpu_cache()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current resident size
            self._start = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
        else:
            self.peak_bytes = self._status("VmHWM") - self._start
