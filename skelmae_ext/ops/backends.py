"""Backend choice: which implementations of the ops can run on a device, and which one a
``backend=`` argument means. Also the compiled kernels' state (loaded once, at import)."""

import torch

from .._extension import INTERPRETER_HINT, has_kernel, load_extension, load_triton

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")

EXTENSION = load_extension()
TRITON = load_triton()
# Fixed at import: resolve_backend runs inside torch.compile'd code, which cannot trace this.
HAS_CUDA_KERNELS = EXTENSION.loaded and has_kernel("masked_graph_conv", "CUDA")


def unavailable_reason(backend, device):
    """Why `backend` cannot run on tensors on `device`, or None if it can."""
    if backend == "reference":
        return None
    if backend == "triton":
        return _triton_unavailable_reason(device)
    if not EXTENSION.loaded:
        return EXTENSION.reason
    if backend == "cpu":
        return None if device.type == "cpu" else f"it runs on CPU tensors, got tensors on {device}"
    if not HAS_CUDA_KERNELS:
        return "skelmae_ext was built without CUDA kernels"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None if device.type == "cuda" else f"it runs on CUDA tensors, got tensors on {device}"


def _triton_unavailable_reason(device):
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if device.type not in ("cpu", "cuda"):
        return f"it runs on CUDA tensors, got tensors on {device}"
    if not TRITON.loaded:
        return TRITON.reason
    if device.type == "cpu" and not TRITON.interpreted:
        return f"on CPU tensors it runs only in Triton's interpreter: {INTERPRETER_HINT}"
    return None


def available_backends(device="cpu"):
    """The backends that can run on tensors on `device`, fastest first (Triton's interpreter,
    on CPU tensors, is the slowest of all)."""
    device = torch.device(device)
    order = ("cpu", "reference", "triton") if device.type == "cpu" else ("cuda", "triton", "reference")
    return [b for b in order if unavailable_reason(b, device) is None]


_RESOLVED = {}


def resolve_backend(backend, device, op="skelmae_ext"):
    """The concrete backend ("cpu", "cuda", "triton" or "reference") that `backend` means;
    remembered per (backend, device) and what loaded, once found available (every op call of a
    step asks)."""
    if torch.compiler.is_compiling() or backend not in BACKENDS:
        return _resolve(backend, device, op)
    key = (backend, device, EXTENSION, TRITON, HAS_CUDA_KERNELS)
    resolved = _RESOLVED.get(key)
    if resolved is None:
        resolved = _RESOLVED[key] = _resolve(backend, device, op)
    return resolved


def _resolve(backend, device, op):
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return available_backends(device)[0]
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"{op}: backend={backend!r} is not available: {reason}")
    return backend


def compiled_op(name, backend):
    """The op implementing `name` on a compiled backend: the C++ op serves "cpu" and "cuda"
    (through the dispatcher), its Triton twin <name>_triton serves "triton"."""
    return getattr(torch.ops.skelmae_ext, name + ("_triton" if backend == "triton" else ""))


def register_compiled(register, triton_launches=None):
    """Calls register(backend), which registers an op's fake kernels and autograd, for each
    compiled backend that loaded: "cpu" (the C++ ops, which serve "cuda" too) and, where the op
    has Triton twins (triton_launches: {op name: name of its launch function in
    skelmae_ext.triton}), "triton" once they are registered as skelmae_ext::<op name>_triton.
    triton_op (not custom_op) lets torch.compile see and schedule the kernels themselves; the
    schemas come from the launch functions' annotations. The fake kernels that register then
    gives replace triton_op's default (the launch function run on fake tensors), which the
    interpreter's kernels cannot run."""
    if EXTENSION.loaded:
        register("cpu")
    if TRITON.loaded and triton_launches:
        for name, launch in triton_launches.items():
            torch.library.triton_op(f"skelmae_ext::{name}_triton", getattr(TRITON.kernels, launch), mutates_args=())
        register("triton")


def cpu_cache_bytes():
    """Bytes of idle buffers held by the CPU kernels' output cache (0 without the kernels).

    Outputs of 1 MiB and more reuse freed buffers of the same size, whose pages are already
    resident: a training step asks for the same sizes every iteration, and first-touch page
    faults cost more than the kernels. The cache holds at most SKELMAE_CPU_CACHE_MB (read at
    the first large output; default 2048, 0 turns it off)."""
    return _extension_module().cpu_cache_bytes() if EXTENSION.loaded else 0


def empty_cpu_cache():
    """Frees the idle buffers of the CPU kernels' output cache (like torch.cuda.empty_cache)."""
    if EXTENSION.loaded:
        _extension_module().empty_cpu_cache()


def _extension_module():
    import skelmae_ext._C as extension

    return extension
