"""Builds skelmae_ext._C: CPU kernels always, CUDA kernels when torch has CUDA and nvcc exists.

Environment switches:
  SKELMAE_NO_CUDA=1     build the CPU kernels only
  SKELMAE_FORCE_CUDA=1  build the CUDA kernels, failing loudly if that is impossible
  TORCH_CUDA_ARCH_LIST  GPU architectures (default: 8.0;9.0+PTX)
  MAX_JOBS              parallel compile jobs (default: sized to cores and memory)
  DEBUG=1               -O0 -g
"""

import glob
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _load_environment_rules():
    """skelmae_ext/_environment.py, by its path: the package itself loads kernels not yet built."""
    spec = importlib.util.spec_from_file_location("skelmae_environment", ROOT / "skelmae_ext" / "_environment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


environment = _load_environment_rules()


def _nvcc_cuda_home():
    """CUDA_HOME from the environment, else the toolkit around nvcc. nvcc on PATH may be a
    wrapper script or symlink (/usr/local/bin/nvcc), from which torch would guess /usr/local."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    return None


_cuda_home = _nvcc_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402  (CUDA_HOME must be set before cpp_extension is imported)
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)


def _cuda_build_decision(cuda_sources):
    """(build_cuda, reason): gated on build capability, never on a visible GPU."""
    if environment.flag("SKELMAE_NO_CUDA"):
        return False, "SKELMAE_NO_CUDA=1"
    missing = None
    if torch.version.cuda is None:
        missing = f"torch {torch.__version__} is a CPU build"
    elif CUDA_HOME is None:
        missing = "nvcc was not found (set CUDA_HOME)"
    elif not cuda_sources:
        missing = "there are no csrc/cuda sources"
    if missing and environment.flag("SKELMAE_FORCE_CUDA"):
        sys.exit(f"skelmae_ext: SKELMAE_FORCE_CUDA=1 but {missing}")
    if missing:
        return False, missing
    return True, f"torch CUDA {torch.version.cuda}, nvcc in {CUDA_HOME}"


def _default_max_jobs():
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gb = 8
    # nvcc takes up to ~4 GB per job on template-heavy torch headers.
    return max(1, min(os.cpu_count() or 1, int(memory_gb // 4)))


def _nvidia_wheel_includes():
    """Headers (cusparse.h, cublas_v2.h, ...) that torch includes but a bare toolkit may lack;
    torch's nvidia-* wheels carry them."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for root in nvidia.__path__:
        found += sorted(glob.glob(os.path.join(root, "*", "include")))
    return [d for d in found if os.path.isdir(d)]


def _openmp_flags():
    # ATen's parallel_for is inline OpenMP when torch uses OpenMP: without -fopenmp it runs serially.
    if "OpenMP" in torch.__config__.parallel_info():
        return ["-fopenmp"]
    return []


def _write_build_info(with_cuda, arch_list):
    info = ROOT / "skelmae_ext" / "_build_info.py"
    info.write_text(
        '"""Written by setup.py at build time."""\n'
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"TORCH_CUDA_VERSION = {torch.version.cuda!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
        f"CUDA_ARCH_LIST = {arch_list!r}\n"
    )


def _extension():
    debug = environment.flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cpu_sources = [str(p.relative_to(ROOT)) for folder in ("", "common", "cpu")
                   for p in sorted((ROOT / "csrc" / folder).glob("*.cpp"))]
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    with_cuda, reason = _cuda_build_decision(cuda_sources)

    os.environ.setdefault("MAX_JOBS", str(_default_max_jobs()))
    limited_api = ["-DPy_LIMITED_API=0x030A0000"]
    # -fno-trapping-math: nothing reads floating-point exception flags, and without it GCC
    # will not turn the selects of PReLU into vector blends (a branch per element instead).
    # One C++ runtime in the process: _C keeps its template instances (std::, c10::) to itself
    # and exports only PyInit__C, so no library binds to its copies (csrc/exports.map).
    hidden = ["-fvisibility=hidden", "-fvisibility-inlines-hidden"]
    cxx_flags = opt + ["-fno-trapping-math"] + hidden + _openmp_flags() + limited_api
    common = dict(
        name="skelmae_ext._C",
        include_dirs=[str(ROOT / "csrc")],
        py_limited_api=True,
        extra_link_args=_openmp_flags() + [f"-Wl,--version-script={ROOT / 'csrc' / 'exports.map'}"],
    )
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        arch_list = os.environ["TORCH_CUDA_ARCH_LIST"]
        print(
            f"skelmae_ext: building CPU + CUDA kernels ({reason}; arch list {arch_list}; "
            f"MAX_JOBS={os.environ['MAX_JOBS']})"
        )
        _write_build_info(True, arch_list)
        common["include_dirs"] += _nvidia_wheel_includes()
        # nvcc's host compiler: the one that compiles the C++ sources (CXX, else the default c++)
        host = shutil.which(os.environ.get("CXX", "c++"))
        nvcc_flags = (opt + ["--expt-relaxed-constexpr", "-lineinfo"] + limited_api
                      + [flag for h in hidden for flag in ("-Xcompiler", h)]
                      + ([] if host is None or os.environ.get("CC") else ["-ccbin", host]))
        return CUDAExtension(
            sources=cpu_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            **common,
        )
    print(f"skelmae_ext: building CPU kernels only ({reason}; MAX_JOBS={os.environ['MAX_JOBS']})")
    _write_build_info(False, None)
    return CppExtension(sources=cpu_sources, extra_compile_args={"cxx": cxx_flags}, **common)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
