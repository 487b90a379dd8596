"""cosine_reconstruction_loss: SkeletonMAE's re-weighted cosine error (GraphMAE's SCE). Its
checks, public wrapper, fake kernels and autograd, for the C++ ops
(csrc/*/cosine_reconstruction_loss_*) and their Triton twins
(skelmae_ext/triton/cosine_reconstruction_loss.py)."""

import numbers

import torch

import skelmae_reference

from . import backends
from ._common import check_float_tensor, check_mask, check_same_device, creating_graph, differentiable_grads, fail
from ._common import needs_grad, rows
from .._extension import has_kernel

OP = "cosine_reconstruction_loss"
REDUCTIONS = ("mean", "sum", "none")


def cosine_reconstruction_loss(pred, target, mask=None, beta=2.0, reduction="mean", *, backend="auto"):
    """Re-weighted cosine reconstruction loss (GraphMAE's SCE with alpha = beta).

        l_r  = (1 - <pred_r, target_r> / (max(|pred_r|, 1e-12) * max(|target_r|, 1e-12)))^beta
        mean = sum_r mask_r * l_r / max(sum_r mask_r, 1)

    Args:
        pred, target: [..., C], the same shape and floating dtype; rows are the leading dims.
        mask: bool of shape pred.shape[:-1] (True = the row counts), or None (every row).
        beta: float > 0 (the paper's best is 2).
        reduction: "mean" over masked rows, "sum", or "none" (mask * l, of shape [...]).
        backend: "auto", "cpu", "cuda", "triton" or "reference" (see skelmae_ext.ops).

    Returns:
        The loss in pred's dtype. Gradients flow to pred and, when it requires grad, to target.
    """
    _check_inputs(pred, target, mask, beta, reduction)
    chosen = backends.resolve_backend(backend, pred.device, OP)
    if chosen == "reference":
        return skelmae_reference.cosine_reconstruction_loss(pred, target, mask, beta, reduction)
    # On the CPU the forward computes the loss alone and the backward the gradients from the
    # inputs (cosine_reconstruction_loss_grad, grad_output read as a tensor). Elsewhere the forward
    # writes the gradients too (each counted row read once) and the backward scales them.
    recompute = chosen == "cpu"
    output_mask = [False, False] if recompute else [needs_grad(pred), needs_grad(target)]
    loss, _, _ = backends.compiled_op(OP, chosen)(
        rows(pred),
        rows(target),
        None if mask is None else mask.reshape(-1),
        float(beta),
        reduction,
        output_mask,
    )
    return loss.reshape(pred.shape[:-1]) if reduction == "none" else loss


def _check_inputs(pred, target, mask, beta, reduction):
    check_float_tensor(OP, "pred", pred)
    check_float_tensor(OP, "target", target)
    if pred.dim() < 1:
        fail(OP, "pred", "of shape [..., C] (at least 1 dim)", "a 0-d tensor")
    if target.shape != pred.shape:
        fail(OP, "target", f"of pred's shape {tuple(pred.shape)}", f"shape {tuple(target.shape)}")
    if target.dtype != pred.dtype:
        fail(OP, "target", f"of pred's dtype {pred.dtype}", target.dtype)
    check_mask(OP, mask, pred.shape[:-1])
    check_same_device(OP, "pred", pred, target=target, mask=mask)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta > 0:
        fail(OP, "beta", "a float > 0", repr(beta))
    if reduction not in REDUCTIONS:
        fail(OP, "reduction", f"one of {REDUCTIONS}", repr(reduction))


def _fake(pred, target, mask, beta, reduction, output_mask):
    loss = pred.new_empty(pred.shape[:1] if reduction == "none" else ())
    return (
        loss,
        pred.new_empty(pred.shape if output_mask[0] else (0,)),
        target.new_empty(target.shape if output_mask[1] else (0,)),
    )


def _backward_fake(grad_output, grad_pred, grad_target, output_mask):
    return (
        grad_pred.new_empty(grad_pred.shape if output_mask[0] else (0,)),
        grad_target.new_empty(grad_target.shape if output_mask[1] else (0,)),
    )


def _grad_fake(grad_output, pred, target, mask, beta, reduction, output_mask):
    return _backward_fake(grad_output, pred, target, output_mask)


def _setup_context_with(grad_op):
    """Keeps the forward's gradients and, where grad_op can recompute the gradients (the C++
    ops' CPU kernel), saves the inputs."""

    def setup_context(ctx, inputs, output):
        pred, target, mask, ctx.beta, ctx.reduction, output_mask = inputs
        ctx.output_mask = tuple(output_mask)
        _, grad_pred, grad_target = output
        ctx.mark_non_differentiable(grad_pred, grad_target)
        # Otherwise autograd passes [R, C] zeros as the "gradients" of those two outputs.
        ctx.set_materialize_grads(False)
        if grad_op is not None and pred.device.type == "cpu":
            ctx.save_for_backward(pred, target, mask)
        ctx.forward_grads = (grad_pred, grad_target)

    return setup_context


def _backward_with(backward_op, grad_op=None):
    """The loss's autograd formula. The forward's gradients, where it computed those needed,
    scaled by grad_output (backward_op, read as a tensor: no host sync); otherwise grad_op
    computes them from the inputs (the C++ ops on the CPU). Gradients to be differentiated again
    come from the reference path on the inputs, which only the CPU route keeps."""

    def backward(ctx, grad_loss, _unused_grad_pred, _unused_grad_target):
        needed = list(ctx.needs_input_grad[:2])
        if grad_loss is None:  # grads are not materialised (see setup_context)
            return None, None, None, None, None, None
        if creating_graph():
            if not ctx.saved_tensors:
                raise RuntimeError(
                    f"{OP}: the {'triton' if grad_op is None else grad_loss.device.type} "
                    "kernels give no gradient that can be differentiated again (create_graph=True); "
                    'use backend="reference"')
            pred, target, mask = ctx.saved_tensors
            return (*differentiable_grads(
                lambda p, t: skelmae_reference.cosine_reconstruction_loss(p, t, mask, ctx.beta, ctx.reduction),
                (pred, target), needed, grad_loss), None, None, None, None)
        forward_computed = all(computed or not need for need, computed in zip(needed, ctx.output_mask))
        if forward_computed:
            grad_pred, grad_target = backward_op(grad_loss, *ctx.forward_grads, needed)
        elif grad_op is not None and has_kernel(OP + "_grad", grad_loss.device.type.upper()):
            grad_pred, grad_target = grad_op(grad_loss, *ctx.saved_tensors, ctx.beta, ctx.reduction, needed)
        else:
            missing = [name for name, need, computed in zip(("pred", "target"), needed, ctx.output_mask)
                       if need and not computed]
            raise RuntimeError(
                f"{OP}: {' and '.join(missing)} need(s) a gradient but the forward ran "
                f"with output_mask={list(ctx.output_mask)} and no kernel computes the gradients from the "
                f"inputs on {grad_loss.device}; call skelmae_ext.ops.{OP}"
            )
        return (
            grad_pred if needed[0] else None,
            grad_target if needed[1] else None,
            None,
            None,
            None,
            None,
        )

    return backward


def _register(backend):
    """Fake kernels and autograd of the ops serving a compiled backend: the C++ ops (one set
    for "cpu" and "cuda"), which also compute the gradients from the inputs (a CPU kernel: see
    cosine_reconstruction_loss), or their Triton twins ("triton")."""
    forward, backward = backends.compiled_op(OP, backend), backends.compiled_op(OP + "_backward", backend)
    torch.library.register_fake(forward.default)(_fake)
    torch.library.register_fake(backward.default)(_backward_fake)
    grad_op = torch.ops.skelmae_ext.cosine_reconstruction_loss_grad if backend == "cpu" else None
    if grad_op is not None:
        torch.library.register_fake(grad_op.default)(_grad_fake)
    torch.library.register_autograd(forward.default, _backward_with(backward, grad_op),
                                    setup_context=_setup_context_with(grad_op))


backends.register_compiled(_register, {OP: "cosine_reconstruction_loss_forward",
                                       OP + "_backward": "cosine_reconstruction_loss_backward"})
