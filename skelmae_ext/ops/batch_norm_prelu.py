"""batch_norm_prelu: BatchNorm then PReLU, ReLU or nothing, fused (the tail of every GIN encoding
layer and of the temporal convolutions' branches). Its checks, public wrapper, fake kernels and
autograd, for the C++ op (csrc/cpu/batch_norm_prelu_cpu.cpp; CPU only: on a GPU cuDNN's
BatchNorm and PReLU run)."""

import torch

import skelmae_reference

from . import backends
from ._common import accumulate_dtype, check_float_tensor, check_same_device, constant, creating_graph
from ._common import differentiable_grads, fail

OP = "batch_norm_prelu"


def batch_norm_prelu(x, norm, activation=None, *, backend="auto"):
    """``activation(norm(x))`` fused: BatchNorm then PReLU, ReLU or nothing, two passes over x
    each way instead of five, and only x kept for the backward.

    Args:
        x: [R, C] with an ``nn.BatchNorm1d``, or [B, C, H, W] with an ``nn.BatchNorm2d``.
        norm: the BatchNorm (or a subclass, or an ``nn.SyncBatchNorm``); its running statistics
            and ``num_batches_tracked`` are updated as ``norm(x)`` updates them.
        activation: an ``nn.PReLU`` (1 or C slopes), an ``nn.ReLU``, or None.
        backend: as for the other ops.

    The fused kernel is a CPU kernel for an affine BatchNorm with a set momentum, on [R, C] or
    on a channels-last [B, C, H, W] (what convolutions return for channels-last input);
    elsewhere, for subclasses of BatchNorm (SyncBatchNorm), and on backend="reference", the
    PyTorch modules run. Gradients flow to x, the BatchNorm's weight and bias and the PReLU's
    slopes.
    """
    _check_inputs(x, norm, activation)
    chosen = backends.resolve_backend(backend, x.device, OP)
    # a subclass (a SyncBatchNorm: statistics of every process) may change the forward pass: it runs
    own = type(norm) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    if chosen != "cpu" or not _kernel_layout(x) or not norm.affine or norm.momentum is None or not own:
        return skelmae_reference.batch_norm_prelu(x, norm, activation)
    batch_stats = norm.training or norm.running_mean is None
    y, mean, var = torch.ops.skelmae_ext.batch_norm_prelu(
        x, norm.weight, norm.bias, _slopes(activation, x),
        None if batch_stats else norm.running_mean, None if batch_stats else norm.running_var, norm.eps)
    if norm.training and norm.running_mean is not None:
        torch.ops.skelmae_ext.batch_norm_update_stats(norm.running_mean, norm.running_var, norm.num_batches_tracked,
                                                      mean, var, norm.momentum, x.numel() // x.shape[1])
    return y


def _check_inputs(x, norm, activation):
    check_float_tensor(OP, "x", x)
    if x.dim() not in (2, 4):
        fail(OP, "x", "of shape [R, C] or [B, C, H, W] (2 or 4 dims)", f"shape {tuple(x.shape)}")
    norm_class = torch.nn.BatchNorm1d if x.dim() == 2 else torch.nn.BatchNorm2d
    if not isinstance(norm, (norm_class, torch.nn.SyncBatchNorm)) or norm.num_features != x.shape[1]:
        fail(OP, "norm", f"an nn.{norm_class.__name__} over C={x.shape[1]} features (x is {x.dim()}-d)", repr(norm))
    prelu = isinstance(activation, torch.nn.PReLU)
    if not (activation is None or isinstance(activation, torch.nn.ReLU) or prelu) or (
            prelu and activation.weight.numel() not in (1, x.shape[1])):
        fail(OP, "activation", f"None, an nn.ReLU or an nn.PReLU with 1 or C={x.shape[1]} parameters",
             repr(activation))
    if norm.training and x.numel() // max(x.shape[1], 1) < 2:
        fail(OP, "x", "of more than 1 value per channel when training", f"shape {tuple(x.shape)}")
    check_same_device(OP, "x", x, norm=norm.weight, activation=activation.weight if prelu else None)


def _kernel_layout(x):
    """Whether the kernel reads x as [R, C] rows without a copy: [R, C] itself, or a
    channels-last [B, C, H, W] (its rows [B*H*W, C])."""
    return x.dim() == 2 or x.is_contiguous(memory_format=torch.channels_last)


def _slopes(activation, x):
    """PReLU's slopes; ReLU is PReLU with slope 0 and no activation one with slope 1."""
    if isinstance(activation, torch.nn.PReLU):
        return activation.weight
    return constant(0.0 if isinstance(activation, torch.nn.ReLU) else 1.0, (1,), x.dtype, x.device)


def _rows_reference(x, weight, bias, prelu_weight, mean, var, eps, batch_stats):
    """The fused op in plain PyTorch on x [R, C] or [B, C, H, W]: BatchNorm with the batch's
    statistics or the given ones (left unchanged), then PReLU."""
    normalized = torch.nn.functional.batch_norm(
        x, None if batch_stats else mean, None if batch_stats else var, weight, bias, training=batch_stats, eps=eps)
    return torch.nn.functional.prelu(normalized, prelu_weight)


def _like_x(x):
    """A new tensor as the kernels return for x: [R, C], or channels-last [B, C, H, W]."""
    return torch.empty_like(x, memory_format=torch.contiguous_format if x.dim() == 2 else torch.channels_last)


def _fake(x, weight, bias, prelu_weight, mean, var, eps):
    channels, stats_dtype = x.shape[1], accumulate_dtype(x.dtype)
    return _like_x(x), x.new_empty(channels, dtype=stats_dtype), x.new_empty(channels, dtype=stats_dtype)


def _backward_fake(grad_output, x, weight, bias, prelu_weight, mean, var, eps, batch_stats, output_mask):
    need_x, *need_parameters = output_mask
    return (_like_x(x) if need_x else x.new_empty(0),
            *(t.new_empty(t.shape if need else (0,)) for t, need in zip((weight, bias, prelu_weight), need_parameters)))


def _update_stats_fake(running_mean, running_var, num_batches_tracked, mean, var, momentum, count):
    return None


def _setup_context(ctx, inputs, output):
    x, weight, bias, prelu_weight, given_mean, _, ctx.eps = inputs
    ctx.batch_stats = given_mean is None  # the statistics are x's own: dx depends on them
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, bias, prelu_weight, mean, var)


def _backward(ctx, grad_y, _unused_grad_mean, _unused_grad_var):
    needed = list(ctx.needs_input_grad[:4])
    if grad_y is None:
        return (None,) * 7
    x, weight, bias, prelu_weight, mean, var = ctx.saved_tensors
    if creating_graph():
        grads = differentiable_grads(
            lambda *inputs: _rows_reference(*inputs, mean, var, ctx.eps, ctx.batch_stats),
            (x, weight, bias, prelu_weight), needed, grad_y)
    else:
        grads = torch.ops.skelmae_ext.batch_norm_prelu_backward(
            grad_y, x, weight, bias, prelu_weight, mean, var, ctx.eps, ctx.batch_stats, needed)
    return tuple(g if need else None for g, need in zip(grads, needed)) + (None,) * 3


def _register(backend):
    torch.library.register_fake("skelmae_ext::batch_norm_prelu")(_fake)
    torch.library.register_fake("skelmae_ext::batch_norm_prelu_backward")(_backward_fake)
    torch.library.register_fake("skelmae_ext::batch_norm_update_stats")(_update_stats_fake)
    torch.library.register_autograd("skelmae_ext::batch_norm_prelu", _backward, setup_context=_setup_context)


backends.register_compiled(_register)
