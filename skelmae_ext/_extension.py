"""Loads the compiled kernels (skelmae_ext._C), or says once why they are not used.

Importing skelmae_ext never fails because of the kernels: a missing or broken _C, or one built
against another torch, gives one warning and every op falls back to the reference PyTorch path.
"""

import importlib
import os
import warnings
from dataclasses import dataclass

import torch

DISABLE_ENV = "SKELMAE_DISABLE_EXTENSION"
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
