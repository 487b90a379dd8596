"""fold_weights: two Linear weights folded into one matrix, in float64 (what the twins in
skelmae_ext.models fold per step). Its checks, public wrapper, fake kernels and autograd, for the
C++ op (csrc/common/fold_weights.cpp: one op call on every device)."""

import torch

from . import backends
from ._common import check_float_tensor, check_same_device, creating_graph, differentiable_grads, fail

OP = "fold_weights"


def fold_weights(outer, inner, plus_identity=False, *, backend="auto"):
    """``outer @ inner`` (``outer @ (I + inner)`` with plus_identity), computed in float64 and
    returned in outer's dtype.

    The folded matrix multiplies every row of a batch, so its rounding errors do not average out,
    and a product that cancels loses digits in float32 (tests/test_twins_training.py: 1e-7 off
    float64 folded so, up to 2e-2 folded in float32).

    Args:
        outer: [out, mid]; inner: [mid, in] (square with plus_identity); floating point.
        backend: as for the other ops ("reference": the same formula in PyTorch ops).

    Returns:
        [out, in]. Gradients flow to outer and inner.
    """
    _check_inputs(outer, inner, plus_identity)
    if backends.resolve_backend(backend, outer.device, OP) == "reference" or not backends.EXTENSION.loaded:
        return _reference(outer, inner, plus_identity)
    return torch.ops.skelmae_ext.fold_weights(outer, inner, plus_identity)


def _reference(outer, inner, plus_identity):
    outer64 = outer.double()
    product = outer64 @ inner.double()
    return (product + outer64 if plus_identity else product).to(outer.dtype)


def _check_inputs(outer, inner, plus_identity):
    check_float_tensor(OP, "outer", outer)
    check_float_tensor(OP, "inner", inner)
    if outer.dim() != 2:
        fail(OP, "outer", "of shape [out, mid] (2 dims)", f"shape {tuple(outer.shape)}")
    if inner.dim() != 2 or inner.shape[0] != outer.shape[1]:
        fail(OP, "inner", f"of shape [{outer.shape[1]}, in] (mid = outer's columns)", f"shape {tuple(inner.shape)}")
    if plus_identity and inner.shape[0] != inner.shape[1]:
        fail(OP, "inner", "square with plus_identity", f"shape {tuple(inner.shape)}")
    check_same_device(OP, "outer", outer, inner=inner)


def _fake(outer, inner, plus_identity):
    return outer.new_empty(outer.shape[0], inner.shape[1])


def _backward_fake(grad_output, outer, inner, plus_identity, output_mask):
    return (outer.new_empty(outer.shape if output_mask[0] else (0,)),
            inner.new_empty(inner.shape if output_mask[1] else (0,)))


def _setup_context(ctx, inputs, output):
    outer, inner, ctx.plus_identity = inputs
    ctx.save_for_backward(outer, inner)


def _backward(ctx, grad):
    outer, inner = ctx.saved_tensors
    needed = list(ctx.needs_input_grad[:2])
    if creating_graph():
        grads = differentiable_grads(lambda o, i: _reference(o, i, ctx.plus_identity), (outer, inner), needed, grad)
    else:
        grads = torch.ops.skelmae_ext.fold_weights_backward(grad, outer, inner, ctx.plus_identity, needed)
    return grads[0] if needed[0] else None, grads[1] if needed[1] else None, None


def _register(backend):
    torch.library.register_fake("skelmae_ext::fold_weights")(_fake)
    torch.library.register_fake("skelmae_ext::fold_weights_backward")(_backward_fake)
    torch.library.register_autograd("skelmae_ext::fold_weights", _backward, setup_context=_setup_context)


backends.register_compiled(_register)
