"""The environment variables: one parsing rule (skelmae_ext/_environment.py) and what each
variable does to the kernels."""

import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest

from skelmae_ext import _environment, _extension, ops

NAME = "SKELMAE_TEST_VARIABLE"


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-value warnings anew."""
    monkeypatch.setattr(_environment, "_warned", set())


@pytest.mark.parametrize("value,expected", [
    ("1", True), ("true", True), ("TRUE", True), (" yes ", True), ("On", True),
    ("0", False), ("false", False), ("False", False), ("no", False), ("OFF", False), ("", False), ("  ", False),
])
def test_flags(monkeypatch, value, expected):
    monkeypatch.setenv(NAME, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _environment.flag(NAME) is expected
        assert _environment.flag(NAME, default=True) is (expected or not value.strip())


def test_an_unset_flag_is_its_default(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    assert _environment.flag(NAME) is False and _environment.flag(NAME, default=True) is True


@pytest.mark.parametrize("value", ["2", "maybe", "enabled", "1.0"])
def test_an_unreadable_flag_warns_once_and_is_its_default(monkeypatch, value):
    monkeypatch.setenv(NAME, value)
    with pytest.warns(RuntimeWarning, match=rf"{NAME}='{value}' is not a flag \(1/true/yes/on or 0/false/no/off\); "
                                            r"using the default, off"):
        assert _environment.flag(NAME) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per value
        assert _environment.flag(NAME) is False


@pytest.mark.parametrize("value,expected", [("0", 0), ("512", 512), (" 4096 ", 4096), ("", 2048),
                                            (str(_environment.MAX_MEGABYTES), _environment.MAX_MEGABYTES)])
def test_megabytes(monkeypatch, value, expected):
    monkeypatch.setenv(NAME, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _environment.megabytes(NAME, 2048) == expected


@pytest.mark.parametrize("value", ["garbage", "-5", "1e3", "1.5", "12MB", "+7", "\u0663",
                                   str(_environment.MAX_MEGABYTES + 1), "99999999999999999999999"])
def test_unreadable_megabytes_warn_and_are_the_default(monkeypatch, value):
    """atoll once read "1e3" as 1, "12MB" as 12 and "-5" as 0 (the cache off), and shifted values
    past 2^63 into nonsense."""
    monkeypatch.setenv(NAME, value)
    with pytest.warns(RuntimeWarning, match=rf"{NAME}='{re.escape(value)}' is not a whole number of megabytes from 0 to "
                                            rf"{_environment.MAX_MEGABYTES}; using the default, 2048 MB"):
        assert _environment.megabytes(NAME, 2048) == 2048


class _OtherBuild:
    TORCH_VERSION = "0.0"
    WITH_CUDA = False


@pytest.mark.parametrize("value,disabled", [("1", True), ("yes", True), ("0", False), ("false", False), ("", False)])
def test_disable_extension(monkeypatch, value, disabled):
    """SKELMAE_DISABLE_EXTENSION=false once disabled the kernels, and the reason said "=1"
    whatever the value."""
    monkeypatch.setenv(_extension.DISABLE_ENV, value)
    if disabled:
        status = _extension.load_extension()
        assert not status.loaded and status.reason == f"disabled by {_extension.DISABLE_ENV}={value}"
    else:  # past the switch, the build is read (another torch's here: nothing is loaded twice)
        with pytest.warns(RuntimeWarning, match="built against torch 0.0"):
            _extension.load_extension(lambda name: _OtherBuild, torch_version="9.9")


KERNEL_OPTIONS_SCRIPT = textwrap.dedent(
    """
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch
        from skelmae_ext import EXTENSION, get_layout, ops
    y = ops.masked_graph_conv(torch.randn(4096, 17, 64), None, torch.zeros(64), get_layout("coco").adjacency())
    del y  # 17 MiB: kept by the output cache unless its limit is below that
    print(EXTENSION.cpu_isa, ops.cpu_cache_bytes() > 0)
    print("\\n".join(str(w.message) for w in caught if w.category is RuntimeWarning))
    """
)


def _kernel_options(**env):
    """(cpu_isa, whether the cache kept a freed output, RuntimeWarnings) in a process with `env`."""
    full = dict(os.environ, **env)
    for name in (_extension.DISABLE_ENV, _extension.INTERPRET_ENV):
        full.pop(name, None)
    result = subprocess.run([sys.executable, "-c", KERNEL_OPTIONS_SCRIPT], env=full, capture_output=True, text=True,
                            check=True, cwd=os.path.dirname(__file__))
    first, *warned = result.stdout.splitlines()
    isa, cached = first.split()
    return isa, cached == "True", "\n".join(warned)


@pytest.mark.skipif(not ops.EXTENSION.loaded, reason="needs the compiled kernels")
def test_cpu_baseline_off_values_keep_the_widest_loops():
    """SKELMAE_CPU_BASELINE=0 or empty once selected the baseline loops (any value did)."""
    unset = _kernel_options()[0]
    assert _kernel_options(SKELMAE_CPU_BASELINE="1")[0] == "baseline"
    assert _kernel_options(SKELMAE_CPU_BASELINE="0")[0] == unset
    assert _kernel_options(SKELMAE_CPU_BASELINE="")[0] == unset


@pytest.mark.skipif(not ops.EXTENSION.loaded, reason="needs the compiled kernels")
def test_cpu_cache_size():
    """The cache's limit follows SKELMAE_CPU_CACHE_MB: 0 and a limit below the output keep
    nothing; an unreadable value warns and keeps the default (2048 MB) instead of what atoll
    made of it (-5: the cache off)."""
    assert _kernel_options(SKELMAE_CPU_CACHE_MB="0")[1] is False
    assert _kernel_options(SKELMAE_CPU_CACHE_MB="16")[1] is False
    assert _kernel_options(SKELMAE_CPU_CACHE_MB="17")[1] is True
    _, cached, warned = _kernel_options(SKELMAE_CPU_CACHE_MB="-5")
    assert cached and "SKELMAE_CPU_CACHE_MB='-5' is not a whole number of megabytes" in warned
