"""masked_graph_conv: mask-token substitution plus GIN aggregation (SkeletonMAE's encoder input,
GraphMAE's GIN layer). Its checks, public wrapper, fake kernels and autograd, for the C++ op
(csrc/*/masked_graph_conv_*) and its Triton twin (skelmae_ext/triton/masked_graph_conv.py)."""

import numbers

import torch

import skelmae_reference

from . import backends
from ._common import (FLOAT_DTYPES, accumulate_dtype, check_float_tensor, check_mask, check_same_device, constant,
                      creating_graph, differentiable_grads, fail)

OP = "masked_graph_conv"


def masked_graph_conv(x, mask, token, adjacency, eps=0.0, *, backend="auto"):
    """Mask-token substitution plus GIN aggregation over every skeleton graph of a batch.

        x~[g, v] = token if mask[g, v] else x[g, v]
        y[g, v]  = (1 + eps) * x~[g, v] + sum_u A[v, u] * x~[g, u]

    Args:
        x: [G, V, C] floating point, G = every (sample, person, frame) graph.
        mask: [G, V] bool (True = replace the joint by the token), or None.
        token: [C], x's dtype: the learnable mask token; None for zeros (a re-mask).
        adjacency: [V, V] float or bool, the layout's binary symmetric adjacency without
            self-loops (any real weights work; no gradient flows to it).
        eps: float or 0-d tensor; a tensor that requires grad gets its gradient.
        backend: "auto", "cpu", "cuda", "triton" or "reference" (see skelmae_ext.ops).

    Returns:
        y: [G, V, C], x's dtype. Gradients flow to x (zero at masked joints), token and eps.
    """
    _check_inputs(x, mask, token, adjacency, eps)
    chosen = backends.resolve_backend(backend, x.device, OP)
    if chosen == "reference":
        return skelmae_reference.masked_graph_conv(x, mask, token, adjacency, eps)
    if token is None:
        token = constant(0.0, (x.shape[-1],), x.dtype, x.device)
    if isinstance(eps, torch.Tensor):
        eps = eps.to(x.device)
    else:
        eps = constant(float(eps), (), accumulate_dtype(x.dtype), x.device)
    return backends.compiled_op(OP, chosen)(x, mask, token, adjacency, eps)


def _check_inputs(x, mask, token, adjacency, eps):
    check_float_tensor(OP, "x", x)
    if x.dim() != 3:
        fail(OP, "x", "of shape [G, V, C] (3 dims)", f"shape {tuple(x.shape)}")
    graphs, joints, channels = x.shape
    if token is not None:
        check_float_tensor(OP, "token", token)
        if tuple(token.shape) != (channels,):
            fail(OP, "token", f"of shape ({channels},) (C of x)", f"shape {tuple(token.shape)}")
        if token.dtype != x.dtype:
            fail(OP, "token", f"of x's dtype {x.dtype}", token.dtype)
    if not isinstance(adjacency, torch.Tensor) or not (
        adjacency.dtype in FLOAT_DTYPES or adjacency.dtype == torch.bool
    ):
        fail(OP, "adjacency", "a floating-point or bool tensor", getattr(adjacency, "dtype", adjacency))
    if tuple(adjacency.shape) != (joints, joints):
        fail(OP, "adjacency", f"of shape ({joints}, {joints}) (V of x)", f"shape {tuple(adjacency.shape)}")
    if adjacency.requires_grad:
        fail(OP, "adjacency", "a fixed layout buffer (no gradient flows to it)", "requires_grad=True")
    check_mask(OP, mask, (graphs, joints))
    check_same_device(OP, "x", x, mask=mask, token=token, adjacency=adjacency)
    if isinstance(eps, torch.Tensor):
        if eps.dim() != 0 or eps.dtype not in FLOAT_DTYPES:
            fail(OP, "eps", "a float or a 0-d floating-point tensor", f"{eps.dtype} of shape {tuple(eps.shape)}")
    elif isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        fail(OP, "eps", "a float or a 0-d floating-point tensor", type(eps).__name__)


def _fake(x, mask, token, adjacency, eps):
    return x.new_empty(x.shape)


def _backward_fake(grad_output, x, mask, token, adjacency, eps, output_mask):
    need_x, need_token, need_eps = output_mask
    return (
        x.new_empty(x.shape if need_x else (0,)),
        token.new_empty(token.shape if need_token else (0,)),
        eps.new_empty(eps.shape if need_eps else (0,)),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_with(backward_op):
    def backward(ctx, grad_output):
        x, mask, token, adjacency, eps = ctx.saved_tensors
        need_x, _, need_token, _, need_eps = ctx.needs_input_grad
        if creating_graph():
            grad_x, grad_token, grad_eps = differentiable_grads(
                lambda x, token, eps: skelmae_reference.masked_graph_conv(x, mask, token, adjacency, eps),
                (x, token, eps), (need_x, need_token, need_eps), grad_output)
        else:
            grad_x, grad_token, grad_eps = backward_op(
                grad_output, x, mask, token, adjacency, eps, [need_x, need_token, need_eps]
            )
        return (
            grad_x if need_x else None,
            None,
            grad_token if need_token else None,
            None,
            grad_eps if need_eps else None,
        )

    return backward


def _register(backend):
    """Fake kernels and autograd of the ops serving a compiled backend: the C++ ops (one set
    for "cpu" and "cuda") or their Triton twins ("triton")."""
    forward, backward = backends.compiled_op(OP, backend), backends.compiled_op(OP + "_backward", backend)
    torch.library.register_fake(forward.default)(_fake)
    torch.library.register_fake(backward.default)(_backward_fake)
    torch.library.register_autograd(forward.default, _backward_with(backward), setup_context=_setup_context)


backends.register_compiled(_register, {OP: "masked_graph_conv_forward", OP + "_backward": "masked_graph_conv_backward"})
