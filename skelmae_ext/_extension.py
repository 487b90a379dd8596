"""Loads the compiled kernels (skelmae_ext._C) and the optional Triton kernels
(skelmae_ext.triton), or says why they are not used, and sets the kernels' options from the
environment (_environment.py parses it).

Importing skelmae_ext never fails because of the kernels: a missing, truncated or broken _C, an
unreadable _build_info.py, or a _C built against another torch gives one warning and every op
falls back to the reference PyTorch path. Triton is optional: without it only backend="triton"
is unavailable (no warning).
"""

import importlib
import importlib.util
import os
import struct
import warnings
from dataclasses import dataclass

import torch

from . import _environment

DISABLE_ENV = "SKELMAE_DISABLE_EXTENSION"
CPU_BASELINE_ENV = "SKELMAE_CPU_BASELINE"
CPU_CACHE_ENV = "SKELMAE_CPU_CACHE_MB"
CPU_CACHE_DEFAULT_MB = 2048
INTERPRET_ENV = "TRITON_INTERPRET"
INTERPRETER_HINT = f"set {INTERPRET_ENV}=1 before importing skelmae_ext (for testing)"
REINSTALL_HINT = "reinstall with `pip install --no-build-isolation .` against the torch you run"


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    reason: str = ""  # why the kernels are not used; empty when loaded
    built_with_cuda: bool = False
    build_torch_version: str = ""
    cpu_isa: str = ""  # the copies the CPU loops run: "avx2" (AVX2 + FMA) or "baseline"


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
    """Imports skelmae_ext._C if it matches the running torch and sets its options from the
    environment. Arguments exist for tests."""
    if _environment.flag(DISABLE_ENV):
        return _unavailable(f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV].strip()}", warn=False)
    torch_version = torch_version or str(torch.__version__)
    try:
        build_info = import_module("skelmae_ext._build_info")
    except ImportError:
        return _unavailable(f"skelmae_ext was not built; {REINSTALL_HINT}")
    except Exception as error:  # a damaged file: SyntaxError, or anything its code raises
        return _unavailable(f"skelmae_ext/_build_info.py is unreadable ({type(error).__name__}: {error}); "
                            f"{REINSTALL_HINT}")
    missing = [name for name in ("TORCH_VERSION", "WITH_CUDA") if not hasattr(build_info, name)]
    if missing:
        return _unavailable(f"skelmae_ext/_build_info.py has no {' or '.join(missing)}; {REINSTALL_HINT}")
    if build_info.TORCH_VERSION != torch_version:
        # Loading a library built against another torch can crash with undefined symbols.
        return _unavailable(
            f"built against torch {build_info.TORCH_VERSION} but running torch {torch_version}; "
            f"{REINSTALL_HINT}"
        )
    spec = importlib.util.find_spec("skelmae_ext._C")
    if spec is None:
        return _unavailable(f"skelmae_ext._C is not built; {_source_tree_hint()}")
    truncated = _truncated_library(spec)
    if truncated:
        return _unavailable(f"skelmae_ext._C failed to load: {truncated}; {REINSTALL_HINT}")
    try:
        module = import_module("skelmae_ext._C")
    except (ImportError, OSError) as error:
        return _unavailable(f"skelmae_ext._C failed to load: {error}; {REINSTALL_HINT}")
    module.set_cpu_baseline(_environment.flag(CPU_BASELINE_ENV))
    module.set_cpu_cache_limit(_environment.megabytes(CPU_CACHE_ENV, CPU_CACHE_DEFAULT_MB) << 20)
    return ExtensionStatus(
        loaded=True,
        built_with_cuda=bool(build_info.WITH_CUDA),
        build_torch_version=build_info.TORCH_VERSION,
        cpu_isa=module.cpu_isa(),
    )


def _source_tree_hint():
    """How to get the kernels: a source checkout imported by accident (`python -m` and pytest put
    the current directory first on sys.path) is named as such."""
    package = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(os.path.join(os.path.dirname(package), "setup.py")):
        return (f"{package} is the source tree, imported ahead of the installed package: run from "
                f"another directory, or build in place with `python setup.py build_ext --inplace`")
    return REINSTALL_HINT


def _truncated_library(spec):
    """Why the library `spec` locates is shorter than its ELF headers say, or None (also for a
    file that is not ELF: the loader's own errors apply). A truncated library passes dlopen's
    first checks, then touching its mapped pages past the end of the file raises SIGBUS, which
    kills the process before Python can catch anything. Reads the headers only (about 1 KB)."""
    if not spec.origin or not os.path.isfile(spec.origin):
        return None
    with open(spec.origin, "rb") as library:
        size = os.fstat(library.fileno()).st_size
        extent = _elf_extent(library)
    if extent is not None and extent > size:
        return f"{spec.origin} is truncated ({size} bytes; its ELF headers describe {extent})"
    return None


# By ELF class (1: 32-bit, 2: 64-bit): the header's word format and where it keeps the program
# and section header tables' offsets and (entry size, count) pairs; a program header's word
# format and where it keeps its segment's file offset and size.
_ELF_HEADER = {1: ("I", 0x1C, 0x20, 0x2A), 2: ("Q", 0x20, 0x28, 0x36)}
_ELF_SEGMENT = {1: ("I", 0x04, 0x10), 2: ("Q", 0x08, 0x20)}


def _elf_extent(file):
    """The bytes an ELF file spans by its own headers (its header tables and segments), or None
    if it does not open as ELF."""
    header = file.read(64)
    if header[:4] != b"\x7fELF" or len(header) < 6 or header[4] not in _ELF_HEADER or header[5] not in (1, 2):
        return None
    order = "<" if header[5] == 1 else ">"
    word, phoff_at, shoff_at, sizes_at = _ELF_HEADER[header[4]]
    if len(header) < sizes_at + 8:
        return sizes_at + 8
    phoff, shoff = (struct.unpack_from(order + word, header, at)[0] for at in (phoff_at, shoff_at))
    phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "4H", header, sizes_at)
    extent = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    segment_word, offset_at, filesz_at = _ELF_SEGMENT[header[4]]
    file.seek(phoff)
    table = file.read(phentsize * phnum)
    for entry in range(0, len(table) - phentsize + 1, phentsize or 1):
        offset, filesz = (struct.unpack_from(order + segment_word, table, entry + at)[0]
                          for at in (offset_at, filesz_at))
        extent = max(extent, offset + filesz)
    return extent


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
    if not _environment.flag(INTERPRET_ENV) and not gpu_visible():
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
