"""linear: ``F.linear`` on the CPU kernels' engines (the models' Linear layers). Its checks,
public wrapper, fake kernels and autograd, for the C++ op (csrc/cpu/linear_cpu.cpp; CPU only:
on a GPU F.linear runs)."""

import torch

from . import backends
from ._common import check_float_tensor, check_same_device, creating_graph, fail, rows

OP = "linear"


def linear(x, weight, bias=None, *, backend="auto"):
    """``F.linear(x, weight, bias)``: ``y = x W^T + b`` over the last dim of x.

    Args:
        x: [..., in]; weight: [out, in]; bias: [out] or None; all of one floating dtype.
        backend: as for the other ops.

    On the "cpu" backend a C++ op runs y and the gradient of x on oneDNN's inner product
    (float32 outputs up to 32 MiB, where torch.backends.mkldnn.enabled), else on MKL into the
    CPU output cache (see cpu_cache_bytes); the weight's gradient is MKL's ``(x^T dy)^T``, the
    faster orientation for few input features. Elsewhere, F.linear. Gradients flow to x,
    weight and bias.
    """
    _check_inputs(x, weight, bias)
    if backends.resolve_backend(backend, x.device, OP) != "cpu":
        return torch.nn.functional.linear(x, weight, bias)
    return torch.ops.skelmae_ext.linear(x, weight, bias)


def _check_inputs(x, weight, bias):
    check_float_tensor(OP, "x", x)
    check_float_tensor(OP, "weight", weight)
    if x.dim() < 1:
        fail(OP, "x", "of shape [..., in] (at least 1 dim)", "a 0-d tensor")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        fail(OP, "weight", f"of shape [out, {x.shape[-1]}] (in = x's last dim)", f"shape {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        fail(OP, "weight", f"of x's dtype {x.dtype}", weight.dtype)
    if bias is not None:
        check_float_tensor(OP, "bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            fail(OP, "bias", f"of shape ({weight.shape[0]},) (out of weight)", f"shape {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            fail(OP, "bias", f"of x's dtype {x.dtype}", bias.dtype)
    check_same_device(OP, "x", x, weight=weight, bias=bias)


def _fake(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _backward_fake(grad_output, x, weight, output_mask):
    return (
        x.new_empty(x.shape if output_mask[0] else (0,)),
        weight.new_empty(weight.shape if output_mask[1] else (0,)),
        weight.new_empty(weight.shape[:1] if output_mask[2] else (0,)),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    needed = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    if creating_graph():
        grads = (grad_y.matmul(weight), rows(grad_y).t().mm(rows(x)), rows(grad_y).sum(0))
    else:
        grads = torch.ops.skelmae_ext.linear_backward(grad_y, x, weight, needed)
    return tuple(g if need else None for g, need in zip(grads, needed))


def _register(backend):
    torch.library.register_fake("skelmae_ext::linear")(_fake)
    torch.library.register_fake("skelmae_ext::linear_backward")(_backward_fake)
    torch.library.register_autograd("skelmae_ext::linear", _backward, setup_context=_setup_context)


backends.register_compiled(_register)
