"""What the op modules share: the input checks' building blocks (metadata only: nothing here
reads tensor values, so torch.compile traces it), row views, and the autograd helpers."""

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fail(op, argument, expected, actual):
    raise ValueError(f"{op}: {argument} must be {expected}, got {actual}")


def check_float_tensor(op, name, tensor):
    if not isinstance(tensor, torch.Tensor):
        fail(op, name, "a torch.Tensor", type(tensor).__name__)
    if tensor.dtype not in FLOAT_DTYPES:
        fail(op, name, f"a floating-point tensor {FLOAT_DTYPES}", tensor.dtype)


def check_same_device(op, reference_name, reference, **others):
    for name, tensor in others.items():
        if tensor is not None and tensor.device != reference.device:
            fail(op, name, f"on {reference_name}'s device {reference.device}", tensor.device)


def check_mask(op, mask, expected_shape):
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        fail(op, "mask", "a bool tensor", getattr(mask, "dtype", type(mask).__name__))
    if tuple(mask.shape) != tuple(expected_shape):
        fail(op, "mask", f"of shape {tuple(expected_shape)}", tuple(mask.shape))


def rows(tensor):
    """tensor [..., C] as [R, C] rows; unlike reshape(-1, C), also for C = 0."""
    return tensor.reshape(math.prod(tensor.shape[:-1]), tensor.shape[-1])


_CONSTANTS = {}


def constant(value, shape, dtype, device):
    """A tensor of `shape` filled with `value`, made once per (value, shape, dtype, device) in eager
    mode: no op, and on a GPU no host-to-device copy, per call. Callers never write to it."""
    if torch.compiler.is_compiling():
        return torch.full(shape, value, dtype=dtype, device=device)
    key = (value, tuple(shape), dtype, device)
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor, even when first asked for there
            tensor = _CONSTANTS[key] = torch.full(shape, value, dtype=dtype, device=device)
    return tensor


def accumulate_dtype(dtype):
    """The dtype the kernels accumulate in for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def needs_grad(tensor):
    return tensor.requires_grad and torch.is_grad_enabled()


def creating_graph():
    """Whether this backward's gradients are themselves differentiated (create_graph=True: a
    gradient penalty, a double backward). The kernels' backward ops have no autograd of their
    own, so their results would be silently wrong there; these backwards then run as PyTorch
    ops instead (autograd turns grad mode on inside a backward only for create_graph)."""
    return torch.is_grad_enabled()


def differentiable_grads(reference, inputs, needed, grad_output):
    """The gradients of reference(*inputs), the op's plain PyTorch twin, for `grad_output`,
    as autograd-differentiable tensors (None where not needed)."""
    wanted = [t for t, need in zip(inputs, needed) if need]
    grads = iter(torch.autograd.grad(reference(*inputs), wanted, grad_output, create_graph=True,
                                     allow_unused=True, materialize_grads=True))
    return [next(grads) if need else None for need in needed]
