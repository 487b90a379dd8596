"""The op registry: registration, opcheck, backend choice, extension loading and fallback."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import skelmae_reference
from skelmae_ext import _environment, _extension, ops
from skelmae_ext.ops import backends

from helpers import DEVICE_BACKENDS, tracing_context
from skeletons import adjacency

OP_NAMES = [
    "masked_graph_conv",
    "masked_graph_conv_backward",
    "cosine_reconstruction_loss",
    "cosine_reconstruction_loss_backward",
]
CPU_ONLY_OP_NAMES = ["batch_norm_prelu", "batch_norm_prelu_backward", "cosine_reconstruction_loss_grad", "linear",
                     "linear_backward"]


def test_compiled_kernels_are_loaded():
    if _environment.flag(_extension.DISABLE_ENV):
        pytest.skip(f"{_extension.DISABLE_ENV} is set")
    assert ops.EXTENSION.loaded, (
        f"{ops.EXTENSION.reason} (run the tests from an installed build, e.g. `pytest tests/`, "
        "not `python -m pytest`, which imports the unbuilt source tree)"
    )


@pytest.mark.parametrize("name", OP_NAMES + CPU_ONLY_OP_NAMES)
def test_every_op_has_a_cpu_kernel(name):
    assert hasattr(torch.ops.skelmae_ext, name)
    assert _extension.has_kernel(name, "CPU")


@pytest.mark.skipif(not ops.EXTENSION.built_with_cuda, reason="built without the CUDA kernels")
@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_has_a_cuda_kernel(name):
    # No GPU needed: the build registers the kernels for the CUDA key.
    assert _extension.has_kernel(name, "CUDA")


def _graph_conv_samples(device):
    generator = torch.Generator().manual_seed(0)
    for requires_grad in (False, True):
        for mask in (None, torch.rand(6, 17, generator=generator) < 0.5):
            x = torch.randn(6, 17, 5, generator=generator).to(device).requires_grad_(requires_grad)
            token = torch.randn(5, generator=generator).to(device).requires_grad_(requires_grad)
            eps = torch.tensor(0.2, device=device).requires_grad_(requires_grad)
            mask = None if mask is None else mask.to(device)
            yield (x, mask, token, adjacency(17).to(device), eps)


def _loss_samples(device):
    generator = torch.Generator().manual_seed(1)
    for reduction in ("mean", "sum", "none"):
        for needs in ([False, False], [True, False], [True, True]):
            pred = torch.randn(12, 7, generator=generator).to(device).requires_grad_(needs[0])
            target = torch.randn(12, 7, generator=generator).to(device).requires_grad_(needs[1])
            mask = (torch.rand(12, generator=generator) < 0.5).to(device)
            yield (pred, target, mask, 2.0, reduction, needs)


def _opcheck(name, backend, args):
    """opcheck of the op serving `backend`: the C++ op, or its Triton twin."""
    with tracing_context(args[0].device, backend):
        torch.library.opcheck(backends.compiled_op(name, backend).default, args)


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_opcheck_graph_conv(device, backend):
    for args in _graph_conv_samples(device):
        _opcheck("masked_graph_conv", backend, args)
        x, mask, token, adj, eps = (a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        backward_args = (torch.randn_like(x), x, mask, token, adj, eps, [True, True, True])
        _opcheck("masked_graph_conv_backward", backend, backward_args)


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_opcheck_loss(device, backend):
    for args in _loss_samples(device):
        _opcheck("cosine_reconstruction_loss", backend, args)
        pred, target, _, _, reduction, needs = args
        grad_output = torch.randn(12 if reduction == "none" else (), device=device)
        backward_args = (grad_output, pred.detach(), target.detach(), needs)
        _opcheck("cosine_reconstruction_loss_backward", backend, backward_args)


def test_opcheck_loss_gradient_from_inputs():
    """The CPU route: a forward that computes no gradient, cosine_reconstruction_loss_grad in
    the backward."""
    for pred, target, mask, beta, reduction, _ in _loss_samples(torch.device("cpu")):
        pred.requires_grad_(), target.requires_grad_()
        _opcheck("cosine_reconstruction_loss", "cpu", (pred, target, mask, beta, reduction, [False, False]))
        grad_output = torch.randn(12 if reduction == "none" else ())
        for needs in ([True, False], [True, True]):
            args = (grad_output, pred.detach(), target.detach(), mask, beta, reduction, needs)
            _opcheck("cosine_reconstruction_loss_grad", "cpu", args)


def test_auto_picks_the_compiled_cpu_kernels():
    assert ops.resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_unknown_backend_is_a_value_error():
    x = torch.randn(2, 17, 3)
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'fast'"):
        ops.masked_graph_conv(x, None, torch.zeros(3), adjacency(17), backend="fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given without a GPU")
def test_cuda_backend_without_gpu_says_why():
    pred = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="backend='cuda' is not available: .*(CUDA|GPU)"):
        ops.cosine_reconstruction_loss(pred, pred, backend="cuda")


def _set_triton(monkeypatch, **status):
    monkeypatch.setattr(backends, "TRITON", _extension.TritonStatus(**status))


def test_triton_not_installed_says_so_and_the_rest_works(monkeypatch):
    _set_triton(monkeypatch, loaded=False, reason="triton is not installed (pip install triton)")
    x = torch.randn(2, 17, 3)
    with pytest.raises(RuntimeError, match=r"backend='triton' is not available: triton is not installed"):
        ops.masked_graph_conv(x, None, torch.zeros(3), adjacency(17), backend="triton")
    assert "triton" not in ops.available_backends("cpu")
    ops.masked_graph_conv(x, None, torch.zeros(3), adjacency(17))


def test_load_triton_without_triton_says_so():
    def import_module(name):
        raise ModuleNotFoundError("No module named 'triton'", name="triton")

    status = _extension.load_triton(import_module, gpu_visible=lambda: True)
    assert not status.loaded and status.reason == "triton is not installed (pip install triton)"


def test_load_triton_imports_nothing_without_a_gpu_or_the_interpreter(monkeypatch):
    monkeypatch.delenv(_extension.INTERPRET_ENV, raising=False)

    def import_module(name):
        raise AssertionError(f"imported {name}")

    status = _extension.load_triton(import_module, gpu_visible=lambda: False)
    assert not status.loaded and "TRITON_INTERPRET=1" in status.reason


def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch):
    _set_triton(monkeypatch, loaded=True, interpreted=False)
    pred = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"backend='triton' is not available: on CPU tensors it runs only in "
                                           r"Triton's interpreter: set TRITON_INTERPRET=1 before importing"):
        ops.cosine_reconstruction_loss(pred, pred, backend="triton")


def test_triton_rejects_other_devices_by_name():
    assert backends.unavailable_reason("triton", torch.device("meta")) == "it runs on CUDA tensors, got tensors on meta"


def test_auto_never_picks_the_interpreter(monkeypatch):
    _set_triton(monkeypatch, loaded=True, interpreted=True)
    assert ops.available_backends("cpu")[-1] == "triton"
    assert ops.resolve_backend("auto", torch.device("cpu")) != "triton"


@pytest.mark.skipif(not ops.EXTENSION.loaded, reason="needs the compiled kernels")
def test_auto_on_a_gpu_prefers_the_cuda_kernels_then_triton(monkeypatch):
    _set_triton(monkeypatch, loaded=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "HAS_CUDA_KERNELS", True)
    assert ops.available_backends("cuda") == ["cuda", "triton", "reference"]
    monkeypatch.setattr(backends, "HAS_CUDA_KERNELS", False)
    assert ops.resolve_backend("auto", torch.device("cuda")) == "triton"


def test_cpu_backend_rejects_other_devices_by_name():
    reason = backends.unavailable_reason("cpu", torch.device("meta"))
    assert reason == "it runs on CPU tensors, got tensors on meta"


def _fake_module(**attributes):
    return types.SimpleNamespace(**attributes)


def test_torch_mismatch_warns_and_falls_back():
    info = _fake_module(TORCH_VERSION="1.0.0", WITH_CUDA=False)
    with pytest.warns(RuntimeWarning, match="built against torch 1.0.0 but running torch 9.9.9"):
        status = _extension.load_extension(lambda name: info, torch_version="9.9.9")
    assert not status.loaded and "reinstall" in status.reason


def test_broken_library_warns_and_falls_back():
    info = _fake_module(TORCH_VERSION="9.9.9", WITH_CUDA=False)

    def import_module(name):
        if name.endswith("_build_info"):
            return info
        raise OSError("undefined symbol: _ZN3c10")

    with pytest.warns(RuntimeWarning, match="failed to load: undefined symbol"):
        status = _extension.load_extension(import_module, torch_version="9.9.9")
    assert not status.loaded


def test_unbuilt_package_warns_and_falls_back():
    def import_module(name):
        raise ImportError(name)

    with pytest.warns(RuntimeWarning, match="was not built"):
        assert not _extension.load_extension(import_module).loaded


DAMAGED_IMPORT_SCRIPT = textwrap.dedent(
    """
    import warnings
    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import skelmae_ext
    import skelmae_reference
    assert not skelmae_ext.EXTENSION.loaded and skelmae_ext.available_backends() == ["reference"]
    pred, target = torch.randn(6, 3), torch.randn(6, 3)
    assert torch.equal(skelmae_ext.cosine_reconstruction_loss(pred, target),
                       skelmae_reference.cosine_reconstruction_loss(pred, target))
    print("\\n".join(str(w.message) for w in caught if w.category is RuntimeWarning))
    """
)
PACKAGE = Path(_extension.__file__).parent
LIBRARY = next(PACKAGE.glob("_C*.so"), None)


def _import_damaged_copy(tmp_path, damage):
    """Imports a copy of the package, damaged by damage(copied package dir), in a process of
    its own; returns the RuntimeWarnings it printed."""
    shutil.copytree(PACKAGE, tmp_path / "skelmae_ext", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(skelmae_reference.__file__).parent, tmp_path / "skelmae_reference",
                    ignore=shutil.ignore_patterns("__pycache__"))
    damage(tmp_path / "skelmae_ext")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop(_extension.INTERPRET_ENV, None)
    env.pop(_extension.DISABLE_ENV, None)
    result = subprocess.run([sys.executable, "-c", DAMAGED_IMPORT_SCRIPT], env=env, cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout


def _truncate(size):
    def damage(package):
        library = next(package.glob("_C*.so"))
        os.truncate(library, size if size >= 0 else library.stat().st_size + size)
    return damage


@pytest.mark.skipif(LIBRARY is None, reason="needs a built library to truncate")
@pytest.mark.parametrize("size", [2_000_000, -1, 100], ids=["2MB", "last-byte", "100B"])
def test_a_truncated_library_warns_and_falls_back(tmp_path, size):
    """A truncated _C once killed the import with SIGBUS (exit 135): dlopen maps pages past
    the end of the file. The loader now checks the file against its ELF headers first."""
    warnings = _import_damaged_copy(tmp_path, _truncate(size))
    assert "compiled kernels unavailable" in warnings and "is truncated" in warnings, warnings


def _write_build_info(text):
    def damage(package):
        (package / "_build_info.py").write_text(text)
    return damage


@pytest.mark.parametrize("text,message", [
    ("TORCH_VERSION = '2.14.1\nWITH_CUDA = False\n", r"_build_info.py is unreadable \(SyntaxError"),
    ("WITH_CUDA = False\n", r"_build_info.py has no TORCH_VERSION;"),
    ("", r"_build_info.py has no TORCH_VERSION or WITH_CUDA;"),
    ("raise RuntimeError('half-written')\n", r"_build_info.py is unreadable \(RuntimeError: half-written\)"),
], ids=["syntax-error", "no-torch-version", "empty", "raises"])
def test_a_damaged_build_info_warns_and_falls_back(tmp_path, text, message):
    warnings = _import_damaged_copy(tmp_path, _write_build_info(text))
    assert "compiled kernels unavailable" in warnings and re.search(message, warnings), warnings


@pytest.mark.skipif(LIBRARY is None, reason="needs a built package to remove the library from")
@pytest.mark.parametrize("checkout", [True, False], ids=["source-tree", "installed"])
def test_a_package_without_its_library_says_how_to_get_it(tmp_path, checkout):
    """`python -m skelmae_ext` (or pytest) run in an unbuilt checkout imports the source tree
    ahead of the installed package: the warning names that case."""
    def damage(package):
        next(package.glob("_C*.so")).unlink()
        if checkout:
            (package.parent / "setup.py").write_text("")
    warnings = _import_damaged_copy(tmp_path, damage)
    assert "skelmae_ext._C is not built" in warnings, warnings
    expected = "is the source tree, imported ahead of the installed package" if checkout else "reinstall with"
    assert expected in warnings, warnings


def test_the_library_check_passes_sound_files():
    """No false alarm: the library in use passes, and a file that is not ELF is left to the
    loader."""
    if LIBRARY is not None:
        assert _extension._truncated_library(importlib.util.spec_from_file_location("skelmae_ext._C", LIBRARY)) is None
    assert _extension._truncated_library(importlib.util.find_spec("skelmae_ext._extension")) is None


FALLBACK_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("error")  # deliberately disabled: no warning expected
    import torch, skelmae_ext
    assert not skelmae_ext.EXTENSION.loaded and skelmae_ext.available_backends() == ["reference"]
    inputs = torch.load(sys.argv[1])
    x, mask, token, adj, eps, pred, target = inputs
    y = skelmae_ext.masked_graph_conv(x, mask, token, adj, eps)
    loss = skelmae_ext.cosine_reconstruction_loss(y, target, mask)
    grads = torch.autograd.grad(loss, [x, token, eps, target])
    torch.save([y.detach(), loss.detach(), *grads], sys.argv[2])
    """
)


@pytest.mark.skipif(not DEVICE_BACKENDS, reason="needs the compiled kernels to compare against")
def test_disabled_extension_gives_the_same_results_through_the_fallback(tmp_path):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(50, 17, 3, generator=generator, requires_grad=True)
    mask = torch.rand(50, 17, generator=generator) < 0.4
    token = torch.randn(3, generator=generator, requires_grad=True)
    eps = torch.tensor(0.1, requires_grad=True)
    target = torch.randn(50, 17, 3, generator=generator, requires_grad=True)
    torch.save([x, mask, token, adjacency(17), eps, None, target], tmp_path / "in.pt")
    env = dict(os.environ, **{_extension.DISABLE_ENV: "1"})
    env.pop(_extension.INTERPRET_ENV, None)  # the reference path alone, even in the Triton test run
    subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT, tmp_path / "in.pt", tmp_path / "out.pt"],
        env=env, check=True, cwd=tmp_path,
    )
    fallback = torch.load(tmp_path / "out.pt")
    y = ops.masked_graph_conv(x, mask, token, adjacency(17), eps, backend="cpu")
    loss = ops.cosine_reconstruction_loss(y, target, mask, backend="cpu")
    ours = [y.detach(), loss.detach(), *torch.autograd.grad(loss, [x, token, eps, target])]
    for a, b in zip(ours, fallback):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
