"""The registry of skelmae_ext's ops: public wrappers, input checks, backend choice, fake
kernels and autograd, for the schemas declared in csrc/ops.cpp.

Backends (the ``backend=`` argument of every op):

- ``"auto"``: the fastest available for the tensors' device: the compiled CPU kernels on CPU,
  the CUDA kernels on a GPU, else the reference path.
- ``"cpu"``, ``"cuda"``: the compiled C++ / CUDA C++ kernels (torch.ops.skelmae_ext.*).
- ``"triton"``: Triton kernels.
- ``"reference"``: plain PyTorch (the ``skelmae_reference`` package), differentiated by autograd.

An unavailable backend raises a RuntimeError saying why.
"""

import importlib.util
import numbers

import torch
import skelmae_reference

from ._extension import has_kernel, load_extension

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

EXTENSION = load_extension()
# Asked once: torch.compile cannot trace the dispatcher query inside the ops.
HAS_CUDA_KERNELS = EXTENSION.loaded and has_kernel("masked_graph_conv", "CUDA")


# ---------------------------------------------------------------------------------------------
# Backend choice


def _unavailable_reason(backend, device):
    """Why `backend` cannot run on tensors on `device`, or None if it can."""
    if backend == "reference":
        return None
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        return "the Triton kernels are not part of this version yet"
    if not EXTENSION.loaded:
        return EXTENSION.reason
    if backend == "cpu":
        return None if device.type == "cpu" else f"it runs on CPU tensors, got tensors on {device}"
    if not HAS_CUDA_KERNELS:
        return "skelmae_ext was built without CUDA kernels"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None if device.type == "cuda" else f"it runs on CUDA tensors, got tensors on {device}"


def available_backends(device="cpu"):
    """The backends that can run on tensors on `device`, fastest first."""
    device = torch.device(device)
    return [b for b in ("cuda", "cpu", "reference") if _unavailable_reason(b, device) is None]


def resolve_backend(backend, device, op="skelmae_ext"):
    """The concrete backend ("cpu", "cuda", "triton" or "reference") that `backend` means."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return available_backends(device)[0]
    reason = _unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"{op}: backend={backend!r} is not available: {reason}")
    return backend


# ---------------------------------------------------------------------------------------------
# Input checks (metadata only: nothing here reads tensor values, so torch.compile traces it)


def _fail(op, argument, expected, actual):
    raise ValueError(f"{op}: {argument} must be {expected}, got {actual}")


def _check_float_tensor(op, name, tensor):
    if not isinstance(tensor, torch.Tensor):
        _fail(op, name, "a torch.Tensor", type(tensor).__name__)
    if tensor.dtype not in FLOAT_DTYPES:
        _fail(op, name, f"a floating-point tensor {FLOAT_DTYPES}", tensor.dtype)


def _check_same_device(op, reference_name, reference, **others):
    for name, tensor in others.items():
        if tensor is not None and tensor.device != reference.device:
            _fail(op, name, f"on {reference_name}'s device {reference.device}", tensor.device)


def _check_mask(op, mask, expected_shape):
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        _fail(op, "mask", "a bool tensor", getattr(mask, "dtype", type(mask).__name__))
    if tuple(mask.shape) != tuple(expected_shape):
        _fail(op, "mask", f"of shape {tuple(expected_shape)}", tuple(mask.shape))


def _check_graph_conv_inputs(x, mask, token, adjacency, eps):
    op = "masked_graph_conv"
    _check_float_tensor(op, "x", x)
    if x.dim() != 3:
        _fail(op, "x", "of shape [G, V, C] (3 dims)", f"shape {tuple(x.shape)}")
    graphs, joints, channels = x.shape
    _check_float_tensor(op, "token", token)
    if tuple(token.shape) != (channels,):
        _fail(op, "token", f"of shape ({channels},) (C of x)", f"shape {tuple(token.shape)}")
    if token.dtype != x.dtype:
        _fail(op, "token", f"of x's dtype {x.dtype}", token.dtype)
    if not isinstance(adjacency, torch.Tensor) or not (
        adjacency.dtype in FLOAT_DTYPES or adjacency.dtype == torch.bool
    ):
        _fail(op, "adjacency", "a floating-point or bool tensor", getattr(adjacency, "dtype", adjacency))
    if tuple(adjacency.shape) != (joints, joints):
        _fail(op, "adjacency", f"of shape ({joints}, {joints}) (V of x)", f"shape {tuple(adjacency.shape)}")
    if adjacency.requires_grad:
        _fail(op, "adjacency", "a fixed layout buffer (no gradient flows to it)", "requires_grad=True")
    _check_mask(op, mask, (graphs, joints))
    _check_same_device(op, "x", x, mask=mask, token=token, adjacency=adjacency)
    if isinstance(eps, torch.Tensor):
        if eps.dim() != 0 or eps.dtype not in FLOAT_DTYPES:
            _fail(op, "eps", "a float or a 0-d floating-point tensor", f"{eps.dtype} of shape {tuple(eps.shape)}")
    elif isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        _fail(op, "eps", "a float or a 0-d floating-point tensor", type(eps).__name__)


def _check_loss_inputs(pred, target, mask, beta, reduction):
    op = "cosine_reconstruction_loss"
    _check_float_tensor(op, "pred", pred)
    _check_float_tensor(op, "target", target)
    if pred.dim() < 1:
        _fail(op, "pred", "of shape [..., C] (at least 1 dim)", "a 0-d tensor")
    if target.shape != pred.shape:
        _fail(op, "target", f"of pred's shape {tuple(pred.shape)}", f"shape {tuple(target.shape)}")
    if target.dtype != pred.dtype:
        _fail(op, "target", f"of pred's dtype {pred.dtype}", target.dtype)
    _check_mask(op, mask, pred.shape[:-1])
    _check_same_device(op, "pred", pred, target=target, mask=mask)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta > 0:
        _fail(op, "beta", "a float > 0", repr(beta))
    if reduction not in REDUCTIONS:
        _fail(op, "reduction", f"one of {REDUCTIONS}", repr(reduction))


# ---------------------------------------------------------------------------------------------
# Public ops


def masked_graph_conv(x, mask, token, adjacency, eps=0.0, *, backend="auto"):
    """Mask-token substitution plus GIN aggregation over every skeleton graph of a batch.

        x~[g, v] = token if mask[g, v] else x[g, v]
        y[g, v]  = (1 + eps) * x~[g, v] + sum_u A[v, u] * x~[g, u]

    Args:
        x: [G, V, C] floating point, G = every (sample, person, frame) graph.
        mask: [G, V] bool (True = replace the joint by the token), or None.
        token: [C], x's dtype: the learnable mask token.
        adjacency: [V, V] float or bool, the layout's binary symmetric adjacency without
            self-loops (any real weights work; no gradient flows to it).
        eps: float or 0-d tensor; a tensor that requires grad gets its gradient.
        backend: "auto", "cpu", "cuda", "triton" or "reference" (see the module docstring).

    Returns:
        y: [G, V, C], x's dtype. Gradients flow to x (zero at masked joints), token and eps.
    """
    _check_graph_conv_inputs(x, mask, token, adjacency, eps)
    chosen = resolve_backend(backend, x.device, "masked_graph_conv")
    if chosen == "reference":
        return skelmae_reference.masked_graph_conv(x, mask, token, adjacency, eps)
    if isinstance(eps, torch.Tensor):
        eps_tensor = eps.to(x.device)
    else:
        eps_tensor = torch.tensor(float(eps), dtype=_accumulate_dtype(x.dtype), device=x.device)
    return torch.ops.skelmae_ext.masked_graph_conv(x, mask, token, adjacency, eps_tensor)


def cosine_reconstruction_loss(pred, target, mask=None, beta=2.0, reduction="mean", *, backend="auto"):
    """Re-weighted cosine reconstruction loss (GraphMAE's SCE with alpha = beta).

        l_r  = (1 - <pred_r, target_r> / (max(|pred_r|, 1e-12) * max(|target_r|, 1e-12)))^beta
        mean = sum_r mask_r * l_r / max(sum_r mask_r, 1)

    Args:
        pred, target: [..., C], the same shape and floating dtype; rows are the leading dims.
        mask: bool of shape pred.shape[:-1] (True = the row counts), or None (every row).
        beta: float > 0 (the paper's best is 2).
        reduction: "mean" over masked rows, "sum", or "none" (mask * l, of shape [...]).
        backend: "auto", "cpu", "cuda", "triton" or "reference" (see the module docstring).

    Returns:
        The loss in pred's dtype. Gradients flow to pred and, when it requires grad, to target.
    """
    _check_loss_inputs(pred, target, mask, beta, reduction)
    chosen = resolve_backend(backend, pred.device, "cosine_reconstruction_loss")
    if chosen == "reference":
        return skelmae_reference.cosine_reconstruction_loss(pred, target, mask, beta, reduction)
    channels = pred.shape[-1]
    output_mask = [_needs_grad(pred), _needs_grad(target)]
    loss, _, _ = torch.ops.skelmae_ext.cosine_reconstruction_loss(
        pred.reshape(-1, channels),
        target.reshape(-1, channels),
        None if mask is None else mask.reshape(-1),
        float(beta),
        reduction,
        output_mask,
    )
    return loss.reshape(pred.shape[:-1]) if reduction == "none" else loss


def _needs_grad(tensor):
    return tensor.requires_grad and torch.is_grad_enabled()


def _accumulate_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# Fake kernels and autograd of the compiled ops


def _graph_conv_fake(x, mask, token, adjacency, eps):
    return x.new_empty(x.shape)


def _graph_conv_backward_fake(grad_output, x, mask, token, adjacency, eps, output_mask):
    need_x, need_token, need_eps = output_mask
    return (
        x.new_empty(x.shape if need_x else (0,)),
        token.new_empty(token.shape if need_token else (0,)),
        eps.new_empty(eps.shape if need_eps else (0,)),
    )


def _graph_conv_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _graph_conv_backward(ctx, grad_output):
    x, mask, token, adjacency, eps = ctx.saved_tensors
    need_x, _, need_token, _, need_eps = ctx.needs_input_grad
    grad_x, grad_token, grad_eps = torch.ops.skelmae_ext.masked_graph_conv_backward(
        grad_output, x, mask, token, adjacency, eps, [need_x, need_token, need_eps]
    )
    return (
        grad_x if need_x else None,
        None,
        grad_token if need_token else None,
        None,
        grad_eps if need_eps else None,
    )


def _loss_fake(pred, target, mask, beta, reduction, output_mask):
    loss = pred.new_empty(pred.shape[:1] if reduction == "none" else ())
    return (
        loss,
        pred.new_empty(pred.shape if output_mask[0] else (0,)),
        target.new_empty(target.shape if output_mask[1] else (0,)),
    )


def _loss_setup_context(ctx, inputs, output):
    ctx.output_mask = tuple(inputs[5])
    _, grad_pred, grad_target = output
    ctx.mark_non_differentiable(grad_pred, grad_target)
    # Otherwise autograd passes [R, C] zeros as the "gradients" of those two outputs.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_pred, grad_target)


def _loss_backward(ctx, grad_loss, _unused_grad_pred, _unused_grad_target):
    # The forward wrote d(loss)/d(input) for grad_output = 1 into fresh buffers; the backward
    # op scales them by grad_output read as a tensor (no host sync, saved buffers untouched).
    needed = ctx.needs_input_grad[:2]
    if grad_loss is None:  # grads are not materialised (see _loss_setup_context)
        return None, None, None, None, None, None
    for name, need, computed in zip(("pred", "target"), needed, ctx.output_mask):
        if need and not computed:
            raise RuntimeError(
                f"cosine_reconstruction_loss: {name} needs a gradient but the forward ran with "
                f"output_mask={list(ctx.output_mask)}; call skelmae_ext.ops.cosine_reconstruction_loss"
            )
    grad_pred, grad_target = torch.ops.skelmae_ext.cosine_reconstruction_loss_backward(
        grad_loss, *ctx.saved_tensors, list(needed)
    )
    return (
        grad_pred if needed[0] else None,
        grad_target if needed[1] else None,
        None,
        None,
        None,
        None,
    )


def _loss_backward_fake(grad_output, grad_pred, grad_target, output_mask):
    return (
        grad_pred.new_empty(grad_pred.shape if output_mask[0] else (0,)),
        grad_target.new_empty(grad_target.shape if output_mask[1] else (0,)),
    )


if EXTENSION.loaded:
    torch.library.register_fake("skelmae_ext::masked_graph_conv")(_graph_conv_fake)
    torch.library.register_fake("skelmae_ext::masked_graph_conv_backward")(_graph_conv_backward_fake)
    torch.library.register_fake("skelmae_ext::cosine_reconstruction_loss")(_loss_fake)
    torch.library.register_fake("skelmae_ext::cosine_reconstruction_loss_backward")(_loss_backward_fake)
    torch.library.register_autograd(
        "skelmae_ext::masked_graph_conv", _graph_conv_backward, setup_context=_graph_conv_setup_context
    )
    torch.library.register_autograd(
        "skelmae_ext::cosine_reconstruction_loss", _loss_backward, setup_context=_loss_setup_context
    )
