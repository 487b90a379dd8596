"""Loads the compiled kernels (skelmae_ext._C) and the optional Triton kernels
(skelmae_ext.triton), or says why they are not used.

Importing skelmae_ext never fails because of the kernels: a missing or broken _C, or one built
against another torch, gives one warning and every op falls back to the reference PyTorch path.
Triton is optional: without it only backend="triton" is unavailable (no warning).
"""

import importlib
import os
import warnings
from dataclasses import dataclass

import torch

DISABLE_ENV = "SKELMAE_DISABLE_EXTENSION"
INTERPRET_ENV = "TRITON_INTERPRET"
INTERPRETER_HINT = f"set {INTERPRET_ENV}=1 before importing skelmae_ext (for testing)"
REINSTALL_HINT = "reinstall with `pip install --no-build-isolation .` against the torch you run"


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    reason: str = ""  # why the kernels are not used; empty when loaded
    built_with_cuda: bool = False
    build_torch_version: str = ""


def _unavailable(reason, warn=True):
    if warn:
        warnings.warn(
            f"skelmae_ext: compiled kernels unavailable, falling back to the reference PyTorch "
            f"path ({reason})",
            RuntimeWarning,
            stacklevel=3,
        )
    return ExtensionStatus(loaded=False, reason=reason)


def load_extension(import_module=importlib.import_module, torch_version=None):
    """Imports skelmae_ext._C if it matches the running torch. Arguments exist for tests."""
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0"):
        return _unavailable(f"disabled by {DISABLE_ENV}=1", warn=False)
    torch_version = torch_version or str(torch.__version__)
    try:
        build_info = import_module("skelmae_ext._build_info")
    except ImportError:
        return _unavailable(f"skelmae_ext was not built; {REINSTALL_HINT}")
    if build_info.TORCH_VERSION != torch_version:
        # Loading a library built against another torch can crash with undefined symbols.
        return _unavailable(
            f"built against torch {build_info.TORCH_VERSION} but running torch {torch_version}; "
            f"{REINSTALL_HINT}"
        )
    try:
        import_module("skelmae_ext._C")
    except (ImportError, OSError) as error:
        return _unavailable(f"skelmae_ext._C failed to load: {error}; {REINSTALL_HINT}")
    return ExtensionStatus(
        loaded=True,
        built_with_cuda=bool(build_info.WITH_CUDA),
        build_torch_version=build_info.TORCH_VERSION,
    )


def has_kernel(op_name, dispatch_key):
    """Whether skelmae_ext::<op_name> has a kernel registered for dispatch_key ("CPU", "CUDA")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"skelmae_ext::{op_name}", dispatch_key)


@dataclass(frozen=True)
class TritonStatus:
    loaded: bool
    reason: str = ""  # why the Triton kernels are not imported; empty when loaded
    interpreted: bool = False  # they run in Triton's CPU interpreter (TRITON_INTERPRET=1)
    kernels: object = None  # the skelmae_ext.triton module


def load_triton(import_module=importlib.import_module, gpu_visible=torch.cuda.is_available):
    """Imports skelmae_ext.triton where its kernels can run: on a CUDA GPU, or on CPU tensors
    in Triton's interpreter (TRITON_INTERPRET=1 when the kernels are defined, i.e. when
    skelmae_ext is imported). Elsewhere triton is not imported at all. Arguments exist for tests."""
    if os.environ.get(INTERPRET_ENV, "0") in ("", "0") and not gpu_visible():
        return TritonStatus(
            loaded=False,
            reason=f"it runs on a CUDA GPU (none is visible), or on CPU tensors in Triton's "
            f"interpreter: {INTERPRETER_HINT}",
        )
    try:
        kernels = import_module("skelmae_ext.triton")
    except Exception as error:  # an optional dependency: any failure only disables the backend
        if isinstance(error, ImportError) and error.name == "triton":
            return TritonStatus(loaded=False, reason="triton is not installed (pip install triton)")
        return TritonStatus(loaded=False, reason=f"the Triton kernels failed to import: {error}")
    return TritonStatus(loaded=True, interpreted=kernels.INTERPRETED, kernels=kernels)
