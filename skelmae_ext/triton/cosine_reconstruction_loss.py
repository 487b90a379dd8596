"""Triton kernels of the cosine reconstruction loss (GraphMAE's SCE) and its backward.

For row r with p = pred[r], t = target[r] (C channels) and eps = 1e-12:
    np = max(|p|, eps), nt = max(|t|, eps), c = <p, t> / (np * nt)
    l_r  = max(1 - c, 0) ^ beta
    mean = sum_r mask_r * l_r / max(sum_r mask_r, 1);  sum = sum_r mask_r * l_r;
    none = mask_r * l_r
Gradient, with g = dl/dc = -beta * (1 - c) ^ (beta - 1) where 1 - c > 0, else 0:
    dl/dp = g * (t / (np * nt) - [|p| >= eps] * c * p / np^2)
    dl/dt = g * (p / (np * nt) - [|t| >= eps] * c * t / nt^2)
(the clamps pass no gradient where they bind, as torch's clamp_min), times the row weight
mask_r / max(sum(mask), 1) for "mean", mask_r for "sum" and "none". The maxima and comparisons
let NaN through, as the C++ kernels' shared math (csrc/common/cosine_reconstruction_loss_math.h) and the
reference path: a row holding NaN or inf has a NaN loss and NaN gradients.

The forward kernel (one program per block of rows) writes the loss (per row, or per-program
partial sums that a second stage reduces) and, for the inputs that need it, the gradient for
grad_output = 1 into fresh buffers. The backward kernel scales those by grad_output, read on the
device: no host sync, and the saved buffers are never written.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

NORM_EPS = tl.constexpr(1e-12)
# Elements of a program's tile, its widest channel block, and its warps: on a GPU 8 elements
# per thread (no register spills on sm_90; timings on an H200: docs/gpu.md); in the interpreter fewer,
# larger programs (it runs them one after another at a large fixed cost each).
TILE_ELEMENTS, MAX_BLOCK_C, NUM_WARPS = (32768, 128, 1) if triton.knobs.runtime.interpret else (1024, 128, 4)


@triton.constexpr_function
def _accumulate_type(dtype):
    return tl.float64 if dtype == tl.float64 else tl.float32


@triton.jit
def _load_tile(ptr, rows, row_ok, c0, channels, BLOCK_C: tl.constexpr):
    """ptr[rows, c0:c0 + BLOCK_C] in the accumulation dtype (0 outside), its offsets and mask."""
    cols = c0 + tl.arange(0, BLOCK_C)
    inside = row_ok[:, None] & (cols < channels)[None, :]
    offsets = rows[:, None] * channels + cols[None, :]
    tile = tl.load(ptr + offsets, mask=inside, other=0)
    return tile.to(_accumulate_type(ptr.dtype.element_ty)), offsets, inside


@triton.jit
def _clamp_min(value, low):
    """max(value, low) that returns a NaN value as it is, like torch.clamp_min (tl.maximum leaves
    NaN unspecified)."""
    return tl.where(value < low, low, value)


@triton.jit
def _power_and_slope(base, beta, INT_BETA: tl.constexpr):
    """base ^ beta and its derivative beta * base ^ (beta - 1) for base >= 0; integer betas by
    multiplication (exact, and cheaper than exp2/log2)."""
    if INT_BETA == 1:
        power = base
        slope = tl.zeros_like(base) + 1
    elif INT_BETA == 2:
        power = base * base
        slope = 2 * base
    elif INT_BETA == 3:
        square = base * base
        power = square * base
        slope = 3 * square
    else:
        log_base = tl.log2(base)
        power = tl.exp2(beta * log_base)
        slope = beta * tl.exp2((beta - 1) * log_base)
    return power, slope


@triton.jit
def _cosine_loss_forward_kernel(
    pred_ptr,  # [R, C] contiguous predictions
    target_ptr,  # [R, C] contiguous targets
    mask_ptr,  # [R] bool, True = the row counts (read only when HAS_MASK)
    row_weight_ptr,  # 0-d, accumulation dtype: a counted row's weight in the gradient
    loss_ptr,  # out: [R] mask_r * l_r when PER_ROW, else [programs] float64, this program's sum
    grad_pred_ptr,  # [R, C] out: row weight * dl/dpred (written when GRAD_PRED)
    grad_target_ptr,  # [R, C] out: row weight * dl/dtarget (written when GRAD_TARGET)
    num_rows,
    channels,
    beta,
    INT_BETA: tl.constexpr,  # beta when it is 1, 2 or 3, else 0
    HAS_MASK: tl.constexpr,
    PER_ROW: tl.constexpr,
    GRAD_PRED: tl.constexpr,
    GRAD_TARGET: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    acc_dtype = row_weight_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < num_rows
    dot = tl.zeros([BLOCK_R], dtype=acc_dtype)
    pred_sq = tl.zeros([BLOCK_R], dtype=acc_dtype)
    target_sq = tl.zeros([BLOCK_R], dtype=acc_dtype)
    for c0 in range(0, channels, BLOCK_C):
        pred, _, _ = _load_tile(pred_ptr, rows, row_ok, c0, channels, BLOCK_C)
        target, _, _ = _load_tile(target_ptr, rows, row_ok, c0, channels, BLOCK_C)
        dot += tl.sum(pred * target, axis=1)
        pred_sq += tl.sum(pred * pred, axis=1)
        target_sq += tl.sum(target * target, axis=1)

    pred_norm = tl.sqrt(pred_sq)
    target_norm = tl.sqrt(target_sq)
    pred_den = _clamp_min(pred_norm, NORM_EPS)
    target_den = _clamp_min(target_norm, NORM_EPS)
    cosine = dot / (pred_den * target_den)
    distance = _clamp_min(1 - cosine, 0)  # only removes rounding below zero
    loss, slope = _power_and_slope(distance, beta, INT_BETA)
    dloss_dcos = tl.where(distance > 0, -slope, 0)  # infinite slope at 0 for beta < 1: none passes
    counted = row_ok
    if HAS_MASK:
        counted = counted & (tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0)
    loss = tl.where(counted, loss, 0)
    if PER_ROW:
        tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=row_ok)
    else:
        tl.store(loss_ptr + tl.program_id(0), tl.sum(loss.to(tl.float64), axis=0))

    if GRAD_PRED or GRAD_TARGET:
        # Masked-out rows get weight 0: their gradient is 0 * derivative, as in the reference.
        weight = tl.where(counted, tl.load(row_weight_ptr), 0) * dloss_dcos
        cross = (weight / (pred_den * target_den))[:, None]
        pred_self = tl.where(pred_norm < NORM_EPS, 0, -weight * cosine / (pred_den * pred_den))
        target_self = tl.where(target_norm < NORM_EPS, 0, -weight * cosine / (target_den * target_den))
        for c0 in range(0, channels, BLOCK_C):
            pred, offsets, inside = _load_tile(pred_ptr, rows, row_ok, c0, channels, BLOCK_C)
            target, _, _ = _load_tile(target_ptr, rows, row_ok, c0, channels, BLOCK_C)
            if GRAD_PRED:
                grad = cross * target + pred_self[:, None] * pred
                tl.store(grad_pred_ptr + offsets, grad.to(grad_pred_ptr.dtype.element_ty), mask=inside)
            if GRAD_TARGET:
                grad = cross * pred + target_self[:, None] * target
                tl.store(grad_target_ptr + offsets, grad.to(grad_target_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _scale_tile(scale, in_ptr, out_ptr, rows, row_ok, c0, channels, BLOCK_C: tl.constexpr):
    grad, offsets, inside = _load_tile(in_ptr, rows, row_ok, c0, channels, BLOCK_C)
    tl.store(out_ptr + offsets, (scale.to(grad.dtype) * grad).to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _scale_rows_kernel(
    grad_output_ptr,  # [R] per row, or 0-d (read through ROW_STRIDE)
    grad_pred_ptr,  # [R, C] the forward's gradients for grad_output = 1 (read when PRED)
    grad_target_ptr,  # [R, C] (read when TARGET)
    out_pred_ptr,  # [R, C] out: grad_output * grad_pred (written when PRED)
    out_target_ptr,  # [R, C] out: grad_output * grad_target (written when TARGET)
    num_rows,
    channels,
    ROW_STRIDE: tl.constexpr,  # 1 for a per-row grad_output ("none"), 0 for a 0-d one
    PRED: tl.constexpr,
    TARGET: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < num_rows
    c0 = tl.program_id(1).to(tl.int64) * BLOCK_C
    scale = tl.load(grad_output_ptr + rows * ROW_STRIDE, mask=row_ok, other=0)[:, None]
    if PRED:
        _scale_tile(scale, grad_pred_ptr, out_pred_ptr, rows, row_ok, c0, channels, BLOCK_C)
    if TARGET:
        _scale_tile(scale, grad_target_ptr, out_target_ptr, rows, row_ok, c0, channels, BLOCK_C)


def _blocks(channels):
    block_c = min(triton.next_power_of_2(max(channels, 1)), MAX_BLOCK_C)
    return TILE_ELEMENTS // block_c, block_c


def _check_args(pred, target, mask, beta, reduction):
    # The public wrapper gives the user-facing errors; these guard direct torch.ops calls.
    torch._check(pred.dim() == 2 and target.shape == pred.shape, lambda: "pred and target must be [R, C]")
    torch._check(mask is None or mask.shape == pred.shape[:1], lambda: "mask must be [R]")
    torch._check(reduction in ("mean", "sum", "none"),
                 lambda: f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    torch._check(beta > 0, lambda: "beta must be > 0")


def _check_backward_args(grad_output, num_rows):
    per_row = grad_output.dim() == 1
    torch._check(grad_output.numel() == (num_rows if per_row else 1),
                 lambda: f"grad_output must be 0-d or [{num_rows}]")


def cosine_reconstruction_loss_forward(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, beta: float,
    reduction: str, output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_args(pred, target, mask, beta, reduction)
    need_pred, need_target = output_mask
    pred, target = pred.contiguous(), target.contiguous()
    mask = None if mask is None else mask.contiguous()
    num_rows, channels = pred.shape
    acc_dtype = torch.promote_types(pred.dtype, torch.float32)
    if reduction == "mean":
        count = pred.new_full((), num_rows, dtype=torch.int64) if mask is None else mask.sum()
        row_weight = 1 / count.clamp_min(1).to(acc_dtype)
    else:
        row_weight = pred.new_ones((), dtype=acc_dtype)
    block_r, block_c = _blocks(channels)
    programs = triton.cdiv(num_rows, block_r)
    per_row = reduction == "none"
    loss = pred.new_empty(num_rows) if per_row else pred.new_empty(programs, dtype=torch.float64)
    grad_pred = torch.empty_like(pred) if need_pred else pred.new_empty(0)
    grad_target = torch.empty_like(target) if need_target else target.new_empty(0)
    wrap_triton(_cosine_loss_forward_kernel)[(programs,)](
        pred, target, pred if mask is None else mask, row_weight, loss, grad_pred, grad_target,
        num_rows, channels, beta, INT_BETA=int(beta) if beta in (1.0, 2.0, 3.0) else 0,
        HAS_MASK=mask is not None, PER_ROW=per_row, GRAD_PRED=need_pred,
        GRAD_TARGET=need_target, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=NUM_WARPS,
    )
    if not per_row:  # second stage; the sums are in float64, like the C++ kernels' long sums
        loss = (loss.sum() * row_weight).to(pred.dtype)
    return loss, grad_pred, grad_target


def cosine_reconstruction_loss_backward(
    grad_output: torch.Tensor, grad_pred: torch.Tensor, grad_target: torch.Tensor,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    need_pred, need_target = output_mask
    grad_pred, grad_target = grad_pred.contiguous(), grad_target.contiguous()
    out_pred = torch.empty_like(grad_pred) if need_pred else grad_pred.new_empty(0)
    out_target = torch.empty_like(grad_target) if need_target else grad_target.new_empty(0)
    if need_pred or need_target:
        num_rows, channels = (grad_pred if need_pred else grad_target).shape
        per_row = grad_output.dim() == 1
        _check_backward_args(grad_output, num_rows)
        block_r, block_c = _blocks(channels)
        grid = (triton.cdiv(num_rows, block_r), triton.cdiv(channels, block_c))
        wrap_triton(_scale_rows_kernel)[grid](
            grad_output.contiguous(), grad_pred, grad_target, out_pred, out_target, num_rows,
            channels, ROW_STRIDE=int(per_row), PRED=need_pred, TARGET=need_target,
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=NUM_WARPS,
        )
    return out_pred, out_target
