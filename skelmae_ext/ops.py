"""The registry of skelmae_ext's ops: public wrappers, input checks, backend choice, fake
kernels and autograd, for the schemas declared in csrc/ops.cpp and for their Triton twins
(registered at the end of this module, schemas inferred from the launch functions).

Backends (the ``backend=`` argument of every op):

- ``"auto"``: the first of ``available_backends(device)``: on CPU tensors the compiled CPU
  kernels, else the reference path; on a GPU the CUDA C++ kernels where they are built, else
  the Triton kernels, else the reference path. (CUDA C++ before Triton is a default, not a
  measurement: no GPU benchmark of the two exists yet.)
- ``"cpu"``, ``"cuda"``: the compiled C++ / CUDA C++ kernels (torch.ops.skelmae_ext.*).
- ``"triton"``: the Triton kernels (skelmae_ext.triton, registered here as
  torch.ops.skelmae_ext.*_triton). They run on CUDA tensors, and on CPU tensors only in
  Triton's interpreter (TRITON_INTERPRET=1 before skelmae_ext is imported), for testing.
- ``"reference"``: plain PyTorch (the ``skelmae_reference`` package), differentiated by autograd.

An unavailable backend raises a RuntimeError saying why.
"""

import math
import numbers

import torch
import skelmae_reference

from ._extension import INTERPRETER_HINT, has_kernel, load_extension, load_triton

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

EXTENSION = load_extension()
TRITON = load_triton()
# Fixed at import: resolve_backend runs inside torch.compile'd code, which cannot trace this.
HAS_CUDA_KERNELS = EXTENSION.loaded and has_kernel("masked_graph_conv", "CUDA")


# ---------------------------------------------------------------------------------------------
# Backend choice


def _unavailable_reason(backend, device):
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
    return [b for b in order if _unavailable_reason(b, device) is None]


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


def _check_batch_norm_prelu_inputs(x, norm, activation):
    op = "batch_norm_prelu"
    _check_float_tensor(op, "x", x)
    if x.dim() not in (2, 4):
        _fail(op, "x", "of shape [R, C] or [B, C, H, W] (2 or 4 dims)", f"shape {tuple(x.shape)}")
    norm_class = torch.nn.BatchNorm1d if x.dim() == 2 else torch.nn.BatchNorm2d
    if not isinstance(norm, (norm_class, torch.nn.SyncBatchNorm)) or norm.num_features != x.shape[1]:
        _fail(op, "norm", f"an nn.{norm_class.__name__} over C={x.shape[1]} features (x is {x.dim()}-d)", repr(norm))
    prelu = isinstance(activation, torch.nn.PReLU)
    if not (activation is None or isinstance(activation, torch.nn.ReLU) or prelu) or (
            prelu and activation.weight.numel() not in (1, x.shape[1])):
        _fail(op, "activation", f"None, an nn.ReLU or an nn.PReLU with 1 or C={x.shape[1]} parameters",
              repr(activation))
    if norm.training and x.numel() // max(x.shape[1], 1) < 2:
        _fail(op, "x", "of more than 1 value per channel when training", f"shape {tuple(x.shape)}")
    _check_same_device(op, "x", x, norm=norm.weight, activation=activation.weight if prelu else None)


def _check_linear_inputs(x, weight, bias):
    op = "linear"
    _check_float_tensor(op, "x", x)
    _check_float_tensor(op, "weight", weight)
    if x.dim() < 1:
        _fail(op, "x", "of shape [..., in] (at least 1 dim)", "a 0-d tensor")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        _fail(op, "weight", f"of shape [out, {x.shape[-1]}] (in = x's last dim)", f"shape {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        _fail(op, "weight", f"of x's dtype {x.dtype}", weight.dtype)
    if bias is not None:
        _check_float_tensor(op, "bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            _fail(op, "bias", f"of shape ({weight.shape[0]},) (out of weight)", f"shape {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            _fail(op, "bias", f"of x's dtype {x.dtype}", bias.dtype)
    _check_same_device(op, "x", x, weight=weight, bias=bias)


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
    return _op("masked_graph_conv", chosen)(x, mask, token, adjacency, eps_tensor)


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
    # The forward writes the gradients too (reading each counted row once) and the backward
    # scales them; on the CPU, loss.backward()'s grad_output of 1 takes them as they are. A CPU
    # forward that is compiled (the backward cannot read grad_output there) or per row
    # ("none") computes the loss alone, and the backward computes the gradients from the
    # inputs (cosine_reconstruction_loss_grad): cheaper than a scaling pass. The CPU kernels
    # read only the rows the mask counts.
    recompute = chosen == "cpu" and (torch.compiler.is_compiling() or reduction == "none")
    output_mask = [False, False] if recompute else [_needs_grad(pred), _needs_grad(target)]
    loss, _, _ = _op("cosine_reconstruction_loss", chosen)(
        _rows(pred),
        _rows(target),
        None if mask is None else mask.reshape(-1),
        float(beta),
        reduction,
        output_mask,
    )
    return loss.reshape(pred.shape[:-1]) if reduction == "none" else loss


def batch_norm_prelu(x, norm, activation=None, *, backend="auto"):
    """``activation(norm(x))`` fused: BatchNorm then PReLU, ReLU or nothing, two passes over x
    each way instead of five, and only x kept for the backward. The tail of every GIN encoding
    layer and of the temporal convolutions' branches.

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
    _check_batch_norm_prelu_inputs(x, norm, activation)
    chosen = resolve_backend(backend, x.device, "batch_norm_prelu")
    rows = _channel_rows(x)
    # a subclass (a SyncBatchNorm: statistics of every process) may change the forward pass: it runs
    own = type(norm) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    if chosen != "cpu" or rows is None or not norm.affine or norm.momentum is None or not own:
        return skelmae_reference.batch_norm_prelu(x, norm, activation)
    batch_stats = norm.training or norm.running_mean is None
    y, mean, var = torch.ops.skelmae_ext.batch_norm_prelu(
        rows, norm.weight, norm.bias, _slopes(activation, x),
        None if batch_stats else norm.running_mean, None if batch_stats else norm.running_var, norm.eps)
    if norm.training and norm.running_mean is not None:
        with torch.no_grad():  # as F.batch_norm: the unbiased variance goes into the running one
            count = rows.shape[0]
            norm.num_batches_tracked.add_(1)
            norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), norm.momentum)
            norm.running_var.lerp_((var * (count / (count - 1))).to(norm.running_var.dtype), norm.momentum)
    if x.dim() == 2:
        return y
    batch, channels, height, width = x.shape
    return y.view(batch, height, width, channels).permute(0, 3, 1, 2)


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
    _check_linear_inputs(x, weight, bias)
    if resolve_backend(backend, x.device, "linear") != "cpu":
        return torch.nn.functional.linear(x, weight, bias)
    rows = torch.ops.skelmae_ext.linear(_rows(x), weight, bias)
    return rows.reshape(*x.shape[:-1], weight.shape[0])


def _rows(tensor):
    """tensor [..., C] as [R, C] rows; unlike reshape(-1, C), also for C = 0."""
    return tensor.reshape(math.prod(tensor.shape[:-1]), tensor.shape[-1])


def _channel_rows(x):
    """x as [R, C] rows without a copy: itself, or a channels-last [B, C, H, W] viewed as
    [B*H*W, C]; None for other memory layouts."""
    if x.dim() == 2:
        return x
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return None


def _slopes(activation, x):
    """PReLU's slopes; ReLU is PReLU with slope 0 and no activation one with slope 1."""
    if isinstance(activation, torch.nn.PReLU):
        return activation.weight
    return x.new_full((1,), 0.0 if isinstance(activation, torch.nn.ReLU) else 1.0)


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


def _op(name, backend):
    """The op implementing `name` on a compiled backend: the C++ op serves "cpu" and "cuda"
    (through the dispatcher), its Triton twin <name>_triton serves "triton"."""
    return getattr(torch.ops.skelmae_ext, name + ("_triton" if backend == "triton" else ""))


def _needs_grad(tensor):
    return tensor.requires_grad and torch.is_grad_enabled()


def _accumulate_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# Fake kernels and autograd of the compiled ops (the C++ ops and their Triton twins alike)


def _graph_conv_fake(x, mask, token, adjacency, eps):
    return x.new_empty(x.shape)


def _graph_conv_backward_fake(grad_output, x, mask, token, adjacency, eps, output_mask):
    need_x, need_token, need_eps = output_mask
    return (
        x.new_empty(x.shape if need_x else (0,)),
        token.new_empty(token.shape if need_token else (0,)),
        eps.new_empty(eps.shape if need_eps else (0,)),
    )


def _creating_graph():
    """Whether this backward's gradients are themselves differentiated (create_graph=True: a
    gradient penalty, a double backward). The kernels' backward ops have no autograd of their
    own, so their results would be silently wrong there; these backwards then run as PyTorch
    ops instead (autograd turns grad mode on inside a backward only for create_graph)."""
    return torch.is_grad_enabled()


def _differentiable_grads(reference, inputs, needed, grad_output):
    """The gradients of reference(*inputs), the op's plain PyTorch twin, for `grad_output`,
    as autograd-differentiable tensors (None where not needed)."""
    wanted = [t for t, need in zip(inputs, needed) if need]
    grads = iter(torch.autograd.grad(reference(*inputs), wanted, grad_output, create_graph=True,
                                     allow_unused=True, materialize_grads=True))
    return [next(grads) if need else None for need in needed]


def _graph_conv_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _graph_conv_backward_with(backward_op):
    def backward(ctx, grad_output):
        x, mask, token, adjacency, eps = ctx.saved_tensors
        need_x, _, need_token, _, need_eps = ctx.needs_input_grad
        if _creating_graph():
            grad_x, grad_token, grad_eps = _differentiable_grads(
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


def _loss_fake(pred, target, mask, beta, reduction, output_mask):
    loss = pred.new_empty(pred.shape[:1] if reduction == "none" else ())
    return (
        loss,
        pred.new_empty(pred.shape if output_mask[0] else (0,)),
        target.new_empty(target.shape if output_mask[1] else (0,)),
    )


def _loss_setup_context_with(grad_op):
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
        # Not saved tensors: a backward that hands them over drops them (the caller may change
        # them in place; a second backward recomputes).
        ctx.forward_grads = (grad_pred, grad_target)

    return setup_context


def _is_exactly_one(tensor):
    """Whether a CPU scalar tensor holds 1 (read on the host: free on the CPU, not traceable)."""
    return (type(tensor) is torch.Tensor and tensor.device.type == "cpu" and tensor.numel() == 1
            and not torch.compiler.is_compiling() and tensor.item() == 1)


def _loss_backward_with(backward_op, grad_op=None):
    """The loss's autograd formula. The forward's gradients, where it computed those needed:
    handed over as they are for grad_output = 1 on the CPU (loss.backward(); once: a second
    backward through a retained graph recomputes), else scaled by grad_output (backward_op, read
    as a tensor: no host sync). Otherwise grad_op computes them from the inputs (the C++ ops on
    the CPU). Gradients to be differentiated again come from the reference path on the inputs,
    which only the CPU route keeps."""

    def backward(ctx, grad_loss, _unused_grad_pred, _unused_grad_target):
        needed = list(ctx.needs_input_grad[:2])
        if grad_loss is None:  # grads are not materialised (see setup_context)
            return None, None, None, None, None, None
        if _creating_graph():
            if not ctx.saved_tensors:
                raise RuntimeError(
                    f"cosine_reconstruction_loss: the {'triton' if grad_op is None else grad_loss.device.type} "
                    "kernels give no gradient that can be differentiated again (create_graph=True); "
                    'use backend="reference"')
            pred, target, mask = ctx.saved_tensors
            return (*_differentiable_grads(
                lambda p, t: skelmae_reference.cosine_reconstruction_loss(p, t, mask, ctx.beta, ctx.reduction),
                (pred, target), needed, grad_loss), None, None, None, None)
        forward_computed = all(computed or not need for need, computed in zip(needed, ctx.output_mask))
        if forward_computed and ctx.forward_grads is not None:
            grad_pred, grad_target = ctx.forward_grads
            if _is_exactly_one(grad_loss) and grad_op is not None:
                ctx.forward_grads = None
            else:
                grad_pred, grad_target = backward_op(grad_loss, grad_pred, grad_target, needed)
        elif grad_op is not None and has_kernel("cosine_reconstruction_loss_grad", grad_loss.device.type.upper()):
            grad_pred, grad_target = grad_op(grad_loss, *ctx.saved_tensors, ctx.beta, ctx.reduction, needed)
        else:
            missing = [name for name, need, computed in zip(("pred", "target"), needed, ctx.output_mask)
                       if need and not computed]
            raise RuntimeError(
                f"cosine_reconstruction_loss: {' and '.join(missing)} need(s) a gradient but the forward ran "
                f"with output_mask={list(ctx.output_mask)} and no kernel computes the gradients from the "
                f"inputs on {grad_loss.device}; call skelmae_ext.ops.cosine_reconstruction_loss"
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


def _loss_backward_fake(grad_output, grad_pred, grad_target, output_mask):
    return (
        grad_pred.new_empty(grad_pred.shape if output_mask[0] else (0,)),
        grad_target.new_empty(grad_target.shape if output_mask[1] else (0,)),
    )


def _loss_grad_fake(grad_output, pred, target, mask, beta, reduction, output_mask):
    return _loss_backward_fake(grad_output, pred, target, output_mask)


def _batch_norm_prelu_fake(x, weight, bias, prelu_weight, mean, var, eps):
    channels, stats_dtype = x.shape[1], _accumulate_dtype(x.dtype)
    return x.new_empty(x.shape), x.new_empty(channels, dtype=stats_dtype), x.new_empty(channels, dtype=stats_dtype)


def _batch_norm_prelu_backward_fake(grad_output, x, weight, bias, prelu_weight, mean, var, eps, batch_stats,
                                    output_mask):
    inputs = (x, weight, bias, prelu_weight)
    return tuple(t.new_empty(t.shape if need else (0,)) for t, need in zip(inputs, output_mask))


def _batch_norm_prelu_setup_context(ctx, inputs, output):
    x, weight, bias, prelu_weight, given_mean, _, ctx.eps = inputs
    ctx.batch_stats = given_mean is None  # the statistics are x's own: dx depends on them
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, bias, prelu_weight, mean, var)


def _batch_norm_prelu_backward(ctx, grad_y, _unused_grad_mean, _unused_grad_var):
    needed = list(ctx.needs_input_grad[:4])
    if grad_y is None:
        return (None,) * 7
    x, weight, bias, prelu_weight, mean, var = ctx.saved_tensors
    if _creating_graph():
        grads = _differentiable_grads(
            lambda *inputs: _batch_norm_prelu_rows(*inputs, mean, var, ctx.eps, ctx.batch_stats),
            (x, weight, bias, prelu_weight), needed, grad_y)
    else:
        grads = torch.ops.skelmae_ext.batch_norm_prelu_backward(
            grad_y, x, weight, bias, prelu_weight, mean, var, ctx.eps, ctx.batch_stats, needed)
    return tuple(g if need else None for g, need in zip(grads, needed)) + (None,) * 3


def _batch_norm_prelu_rows(x, weight, bias, prelu_weight, mean, var, eps, batch_stats):
    """The fused op in plain PyTorch on x [R, C]: BatchNorm with the batch's statistics or the
    given ones (left unchanged), then PReLU."""
    normalized = torch.nn.functional.batch_norm(
        x, None if batch_stats else mean, None if batch_stats else var, weight, bias, training=batch_stats, eps=eps)
    return torch.nn.functional.prelu(normalized, prelu_weight)


def _linear_fake(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


def _linear_backward_fake(grad_output, x, weight, output_mask):
    return (
        x.new_empty(x.shape if output_mask[0] else (0,)),
        weight.new_empty(weight.shape if output_mask[1] else (0,)),
        weight.new_empty(weight.shape[:1] if output_mask[2] else (0,)),
    )


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _linear_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    needed = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    if _creating_graph():
        grads = (grad_y.mm(weight), grad_y.t().mm(x), grad_y.sum(0))
    else:
        grads = torch.ops.skelmae_ext.linear_backward(grad_y, x, weight, needed)
    return tuple(g if need else None for g, need in zip(grads, needed))


def _register(backend):
    """Fake kernels and autograd of the ops serving a compiled backend: the C++ ops (one set
    for "cpu" and "cuda") or their Triton twins ("triton")."""
    graph_conv, graph_conv_backward, loss, loss_backward = (
        _op(name, backend)
        for name in ("masked_graph_conv", "masked_graph_conv_backward", "cosine_reconstruction_loss",
                     "cosine_reconstruction_loss_backward")
    )
    torch.library.register_fake(graph_conv.default)(_graph_conv_fake)
    torch.library.register_fake(graph_conv_backward.default)(_graph_conv_backward_fake)
    torch.library.register_fake(loss.default)(_loss_fake)
    torch.library.register_fake(loss_backward.default)(_loss_backward_fake)
    torch.library.register_autograd(
        graph_conv.default, _graph_conv_backward_with(graph_conv_backward), setup_context=_graph_conv_setup_context
    )
    # The C++ ops also compute the loss's gradients from the inputs (a CPU kernel): see
    # cosine_reconstruction_loss.
    grad_op = torch.ops.skelmae_ext.cosine_reconstruction_loss_grad if backend == "cpu" else None
    if grad_op is not None:
        torch.library.register_fake(grad_op.default)(_loss_grad_fake)
    torch.library.register_autograd(
        loss.default, _loss_backward_with(loss_backward, grad_op), setup_context=_loss_setup_context_with(grad_op)
    )


if EXTENSION.loaded:
    _register("cpu")
    # CPU only: on a GPU, cuDNN's BatchNorm and PReLU run (see batch_norm_prelu), and F.linear
    # (see linear).
    torch.library.register_fake("skelmae_ext::linear")(_linear_fake)
    torch.library.register_fake("skelmae_ext::linear_backward")(_linear_backward_fake)
    torch.library.register_autograd("skelmae_ext::linear", _linear_backward, setup_context=_linear_setup_context)
    torch.library.register_fake("skelmae_ext::batch_norm_prelu")(_batch_norm_prelu_fake)
    torch.library.register_fake("skelmae_ext::batch_norm_prelu_backward")(_batch_norm_prelu_backward_fake)
    torch.library.register_autograd(
        "skelmae_ext::batch_norm_prelu", _batch_norm_prelu_backward, setup_context=_batch_norm_prelu_setup_context
    )

if TRITON.loaded:
    # triton_op (not custom_op) lets torch.compile see and schedule the kernels themselves; the
    # schemas come from the launch functions' annotations. The fake kernels registered by
    # _register replace triton_op's default (the launch function run on fake tensors), which
    # the interpreter's kernels cannot run.
    for _name, _launch in (
        ("masked_graph_conv", TRITON.kernels.graph_conv_forward),
        ("masked_graph_conv_backward", TRITON.kernels.graph_conv_backward),
        ("cosine_reconstruction_loss", TRITON.kernels.cosine_loss_forward),
        ("cosine_reconstruction_loss_backward", TRITON.kernels.cosine_loss_backward),
    ):
        torch.library.triton_op(f"skelmae_ext::{_name}_triton", _launch, mutates_args=())
    _register("triton")
