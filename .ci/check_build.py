"""Fails CI when the build is not what this machine can build: the compiled kernels must load;
the library must export at most MAX_EXPORTS dynamic symbols (PyInit__C among them, no C++ ones),
link libstdc++ dynamically and define none of the C++ runtime itself (one C++ runtime in the
process); and when csrc/cuda sources exist and torch has CUDA, every op must have a CUDA kernel
and every CUDA source device code for sm_90 (the H100 / H200; not where SKELMAE_ARCH_LIST_ONLY is
set) and for each architecture of the build's arch list (read from the library's .nv_fatbin
section: no GPU or cuobjdump needed)."""

import importlib
import os
import pathlib
import re
import subprocess
import sys

import torch

import skelmae_ext
from fatbin import describe, device_code
from skelmae_ext import _extension

REQUIRED_CUBIN = 90

OPS = [
    "masked_graph_conv",
    "masked_graph_conv_backward",
    "cosine_reconstruction_loss",
    "cosine_reconstruction_loss_backward",
]
# CPU only: on a GPU the models run cuDNN's BatchNorm and PReLU, and the loss's gradient comes
# from its forward.
CPU_OPS = OPS + ["batch_norm_prelu", "batch_norm_prelu_backward", "batch_norm_update_stats",
                 "cosine_reconstruction_loss_grad", "linear", "linear_backward"]
# One kernel for every device (ATen ops): registered as CompositeExplicitAutograd.
EVERY_DEVICE_OPS = ["fold_weights", "fold_weights_backward"]


MAX_EXPORTS = 30
# What only the C++ runtime (libstdc++, libgcc) defines: its locale, stream and exception machinery.
RUNTIME = re.compile(r"std::(locale|codecvt|ios_base|basic_ios|basic_streambuf|basic_ostream<[^>]*>::)"
                     r"|^(__cxa_|__gxx_|_Unwind_)")


def symbols(library, *options):
    """(kind, demangled name) of the symbols that `nm` lists as defined in the library."""
    lines = subprocess.run(["nm", "--defined-only", "--demangle", *options, library], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return [(parts[1], parts[2]) for parts in (line.split(None, 2) for line in lines) if len(parts) == 3]


def check_exports(library):
    exported = [name for _, name in symbols(library, "--dynamic")]
    if "PyInit__C" not in exported:
        sys.exit(f"{library}: PyInit__C is not exported")
    cpp = [name for name in exported if "::" in name or "(" in name]
    if len(exported) > MAX_EXPORTS or cpp:
        sys.exit(f"{library}: {len(exported)} dynamic symbols exported (at most {MAX_EXPORTS}, no C++ ones); "
                 f"C++ ones: {cpp[:5]}: build with -fvisibility=hidden and csrc/exports.map")
    runtime = sorted({name for _, name in symbols(library) if RUNTIME.search(name)})
    if runtime:
        sys.exit(f"{library}: defines C++ runtime code (a second runtime in the process): {runtime[:5]}")
    needed = subprocess.run(["readelf", "--dynamic", library], capture_output=True, text=True, check=True).stdout
    if "libstdc++.so" not in needed:
        sys.exit(f"{library}: does not link libstdc++ dynamically")
    print(f"{library}: exports {exported}; libstdc++ linked dynamically, none of the runtime defined")


def expected_code(arch_list):
    """(cubin, PTX) architecture numbers of a TORCH_CUDA_ARCH_LIST such as "8.0;9.0+PTX"."""
    cubins, ptx = set(), set()
    for item in arch_list.replace(" ", ";").split(";"):
        if item:
            number = int("".join(ch for ch in item.split("+")[0] if ch.isdigit()))
            cubins.add(number)
            if item.endswith("+PTX"):
                ptx.add(number)
    # The GPU check builds for the GPU at hand alone (scripts/gpu_check.py sets the variable).
    return cubins | (set() if os.environ.get("SKELMAE_ARCH_LIST_ONLY") else {REQUIRED_CUBIN}), ptx


def check_device_code(cuda_sources):
    from skelmae_ext import _build_info

    library = importlib.import_module("skelmae_ext._C").__file__
    entries = device_code(library)
    cubins, ptx = expected_code(_build_info.CUDA_ARCH_LIST)
    containers = sorted({e.container for e in entries})
    if len(containers) < len(cuda_sources):
        sys.exit(f"{library}: {len(containers)} fat binaries for {len(cuda_sources)} CUDA sources")
    for container in containers:
        found = {(e.kind, e.arch) for e in entries if e.container == container}
        missing = [f"sm_{a} cubin" for a in sorted(cubins) if ("ELF", a) not in found]
        missing += [f"compute_{a} PTX" for a in sorted(ptx) if ("PTX", a) not in found]
        if missing:
            sys.exit(f"{library}: fat binary {container} lacks {', '.join(missing)}")
    print(f"device code ({_build_info.CUDA_ARCH_LIST}): {describe(entries)}")


status = skelmae_ext.EXTENSION
if not status.loaded:
    sys.exit(f"compiled kernels did not load: {status.reason}")
check_exports(importlib.import_module("skelmae_ext._C").__file__)
missing_cpu = [op for op in CPU_OPS if not _extension.has_kernel(op, "CPU")]
missing_cpu += [op for op in EVERY_DEVICE_OPS if not _extension.has_kernel(op, "CompositeExplicitAutograd")]
if missing_cpu:
    sys.exit(f"ops without a CPU kernel: {missing_cpu}")

cuda_sources = sorted(pathlib.Path("csrc/cuda").glob("*.cu"))
if cuda_sources and torch.version.cuda:
    if not status.built_with_cuda:
        sys.exit(f"{len(cuda_sources)} CUDA sources exist but the CUDA kernels were not built")
    missing_cuda = [op for op in OPS if not _extension.has_kernel(op, "CUDA")]
    if missing_cuda:
        sys.exit(f"ops without a CUDA kernel: {missing_cuda}")
    print(f"CUDA kernels registered for {len(OPS)} ops")
    check_device_code(cuda_sources)
else:
    print(f"no CUDA build expected (CUDA sources: {len(cuda_sources)}, torch CUDA: {torch.version.cuda})")
print(f"CPU kernels registered for {len(CPU_OPS)} ops; torch {torch.__version__}")
