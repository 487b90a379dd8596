"""Triton kernels of the masked skeleton graph convolution and its backward.

Forward, for graph g, joints v, u and channels c:
    x~[g, v] = token if mask[g, v] else x[g, v]
    y[g, v]  = (1 + eps) * x~[g, v] + sum_u A[v, u] * x~[g, u]
Backward, with S = A + (1 + eps) I:
    agg[g, v] = sum_u S[u, v] * dy[g, u]        (gathered along the transposed neighbour lists)
    dx[g, v]  = 0 if mask[g, v] else agg[g, v]
    dtoken    = sum over masked (g, v) of agg[g, v]
    deps      = sum_{g, v, c} x~[g, v, c] * dy[g, v, c]

A first one-program kernel turns the dense adjacency (any real or bool [V, V] matrix; zeros
skipped) into padded neighbour lists on the device, so nothing waits on the host. A program of
the main kernels owns whole graphs (GRAPHS_PER_PROGRAM of them, V x BLOCK_C each): it loads its
tile once and gathers the neighbours' rows, which the tile just brought into cache. The token and
eps gradients are per-program partial sums in float64, reduced by a second stage (no atomics:
deterministic, and the interpreter cannot run half-precision atomics). Everything else
accumulates in float32 (float64 for float64 inputs) and rounds only at the store.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# Elements of a program's tile, its widest channel block, and its warps. On a GPU: 8 elements
# per thread, which ptxas compiles for sm_90 with at most a few bytes of register spills
# (timings on an H200: docs/gpu.md).
# The interpreter runs the programs one after another at a large fixed cost each, so it gets
# fewer, larger programs.
TILE_ELEMENTS, MAX_BLOCK_C, NUM_WARPS = (65536, 64, 1) if triton.knobs.runtime.interpret else (4096, 32, 16)


@triton.jit
def _neighbour_lists_kernel(
    adjacency_ptr,  # [V, V] float or bool adjacency
    stride_v,  # stride of A between the rows of the lists: the transpose swaps the two strides
    stride_u,
    index_ptr,  # [V, V] int32 out: index[v, :degree[v]] = the u with A[v, u] != 0, ascending
    weight_ptr,  # [V, V] out: weight[v, k] = A[v, index[v, k]] (the padding is never read)
    degree_ptr,  # [V + 1] int32 out: degree[v], then the largest degree
    JOINTS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    v = tl.arange(0, BLOCK_V)[:, None]
    u = tl.arange(0, BLOCK_V)[None, :]
    inside = (v < JOINTS) & (u < JOINTS)
    a = tl.load(adjacency_ptr + v * stride_v + u * stride_u, mask=inside, other=0)
    a = a.to(weight_ptr.dtype.element_ty)
    edge = (a != 0) & inside
    slot = tl.cumsum(edge.to(tl.int32), axis=1) - 1
    tl.store(index_ptr + v * JOINTS + slot, u + tl.zeros_like(slot), mask=edge)
    tl.store(weight_ptr + v * JOINTS + slot, a, mask=edge)
    degree = tl.sum(edge.to(tl.int32), axis=1)
    joints = tl.arange(0, BLOCK_V)
    tl.store(degree_ptr + joints, degree, mask=joints < JOINTS)
    tl.store(degree_ptr + JOINTS, tl.max(degree, axis=0))


@triton.jit
def _graph_tile(num_graphs, channels, JOINTS: tl.constexpr, GRAPHS_PER_PROGRAM: tl.constexpr,
                BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's rows (g * V + v, whole graphs), their joints v, and its channels."""
    local = tl.arange(0, BLOCK_ROWS)
    rows = tl.program_id(0).to(tl.int64) * (GRAPHS_PER_PROGRAM * JOINTS) + local
    row_ok = (local < GRAPHS_PER_PROGRAM * JOINTS) & (rows < num_graphs * JOINTS)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    return rows, local % JOINTS, row_ok, cols, cols < channels


@triton.jit
def _load_rows(x_ptr, mask_ptr, token_ptr, rows, row_ok, cols, col_ok, channels,
               SUBSTITUTE: tl.constexpr):
    """x[rows, cols] (0 outside the tile), with the token at masked joints when SUBSTITUTE."""
    inside = row_ok[:, None] & col_ok[None, :]
    offsets = rows[:, None] * channels + cols[None, :]
    if SUBSTITUTE:
        masked = (tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0)[:, None]
        token = tl.load(token_ptr + cols, mask=col_ok, other=0)[None, :]
        tile = tl.where(masked, token, tl.load(x_ptr + offsets, mask=inside & ~masked, other=0))
    else:
        tile = tl.load(x_ptr + offsets, mask=inside, other=0)
    return tile


@triton.jit
def _aggregate(src_ptr, mask_ptr, token_ptr, index_ptr, weight_ptr, degree_ptr, eps_ptr,
               rows, joint, row_ok, cols, col_ok, channels,
               JOINTS: tl.constexpr, SUBSTITUTE: tl.constexpr):
    """(1 + eps) * src~[rows] + sum_k weight[v, k] * src~[row of neighbour k], in the weights'
    (accumulation) dtype; src~ = src with the token substituted when SUBSTITUTE."""
    acc_dtype = weight_ptr.dtype.element_ty
    self_weight = 1 + tl.load(eps_ptr).to(acc_dtype)
    tile = _load_rows(src_ptr, mask_ptr, token_ptr, rows, row_ok, cols, col_ok, channels, SUBSTITUTE)
    acc = self_weight * tile.to(acc_dtype)
    degree = tl.load(degree_ptr + joint, mask=row_ok, other=0)
    graph_start = rows - joint
    for k in range(0, tl.load(degree_ptr + JOINTS)):
        has = row_ok & (k < degree)
        u = tl.load(index_ptr + joint * JOINTS + k, mask=has, other=0)
        w = tl.load(weight_ptr + joint * JOINTS + k, mask=has, other=0)
        source = _load_rows(src_ptr, mask_ptr, token_ptr, graph_start + u, has, cols, col_ok,
                            channels, SUBSTITUTE)
        acc += w[:, None] * source.to(acc_dtype)
    return acc


@triton.jit
def _graph_conv_forward_kernel(
    x_ptr,  # [G, V, C] contiguous input
    mask_ptr,  # [G, V] bool, True = masked joint (read only when HAS_MASK)
    token_ptr,  # [C] mask token
    index_ptr, weight_ptr, degree_ptr,  # neighbour lists of A (rows: v gathers from u)
    eps_ptr,  # 0-d eps
    y_ptr,  # [G, V, C] output
    num_graphs, channels,
    # the tile (see _layout)
    JOINTS: tl.constexpr, GRAPHS_PER_PROGRAM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_MASK: tl.constexpr,
):
    rows, joint, row_ok, cols, col_ok = _graph_tile(num_graphs, channels, JOINTS,
                                                    GRAPHS_PER_PROGRAM, BLOCK_ROWS, BLOCK_C)
    y = _aggregate(x_ptr, mask_ptr, token_ptr, index_ptr, weight_ptr, degree_ptr, eps_ptr,
                   rows, joint, row_ok, cols, col_ok, channels, JOINTS, HAS_MASK)
    tl.store(y_ptr + rows[:, None] * channels + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _graph_conv_backward_kernel(
    grad_y_ptr,  # [G, V, C] dy, contiguous
    x_ptr, mask_ptr, token_ptr,  # the forward's inputs (x~ for the eps gradient)
    index_ptr, weight_ptr, degree_ptr,  # neighbour lists of A^T (rows: v gathers from u)
    eps_ptr,  # 0-d eps
    grad_x_ptr,  # [G, V, C] out: dx (written when GRAD_X)
    token_partial_ptr,  # [programs along G, C] float64 out: this program's masked agg sum (GRAD_TOKEN)
    eps_partial_ptr,  # [programs along G, programs along C] float64 out: its sum of x~ * dy (GRAD_EPS)
    num_graphs, channels,
    # the tile (see _layout)
    JOINTS: tl.constexpr, GRAPHS_PER_PROGRAM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_MASK: tl.constexpr,
    GRAD_X: tl.constexpr,
    GRAD_TOKEN: tl.constexpr,  # implies HAS_MASK
    GRAD_EPS: tl.constexpr,
):
    rows, joint, row_ok, cols, col_ok = _graph_tile(num_graphs, channels, JOINTS,
                                                    GRAPHS_PER_PROGRAM, BLOCK_ROWS, BLOCK_C)
    inside = row_ok[:, None] & col_ok[None, :]
    if GRAD_X or GRAD_TOKEN:
        agg = _aggregate(grad_y_ptr, mask_ptr, token_ptr, index_ptr, weight_ptr, degree_ptr,
                         eps_ptr, rows, joint, row_ok, cols, col_ok, channels, JOINTS, False)
        if HAS_MASK:
            masked = (tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0)[:, None]
        else:
            masked = tl.zeros([BLOCK_ROWS, 1], dtype=tl.int1)
        if GRAD_X:
            tl.store(grad_x_ptr + rows[:, None] * channels + cols[None, :],
                     tl.where(masked, 0, agg).to(grad_x_ptr.dtype.element_ty), mask=inside)
        if GRAD_TOKEN:
            # Summed in float64, like the C++ kernels: these sums cancel heavily.
            token_sum = tl.sum(tl.where(masked, agg, 0).to(tl.float64), axis=0)
            tl.store(token_partial_ptr + tl.program_id(0).to(tl.int64) * channels + cols,
                     token_sum, mask=col_ok)
    if GRAD_EPS:
        acc_dtype = weight_ptr.dtype.element_ty
        x_tilde = _load_rows(x_ptr, mask_ptr, token_ptr, rows, row_ok, cols, col_ok, channels,
                             HAS_MASK)
        dy = _load_rows(grad_y_ptr, mask_ptr, token_ptr, rows, row_ok, cols, col_ok, channels, False)
        products = (x_tilde.to(acc_dtype) * dy.to(acc_dtype)).to(tl.float64)
        eps_sum = tl.sum(tl.sum(products, axis=1), axis=0)
        tl.store(eps_partial_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), eps_sum)


def _neighbour_lists(adjacency, transpose, dtype):
    joints = adjacency.shape[0]
    index = adjacency.new_empty((joints, joints), dtype=torch.int32)
    weight = adjacency.new_empty((joints, joints), dtype=dtype)
    degree = adjacency.new_empty((joints + 1,), dtype=torch.int32)
    stride_v, stride_u = adjacency.stride()
    if transpose:
        stride_v, stride_u = stride_u, stride_v
    wrap_triton(_neighbour_lists_kernel)[(1,)](
        adjacency, stride_v, stride_u, index, weight, degree,
        JOINTS=joints, BLOCK_V=triton.next_power_of_2(joints),
    )
    return index, weight, degree


def _layout(x):
    """Block sizes and grid of the main kernels for x of shape [G, V, C]."""
    graphs, joints, channels = x.shape
    block_c = min(triton.next_power_of_2(channels), MAX_BLOCK_C)
    block_rows = max(triton.next_power_of_2(joints), TILE_ELEMENTS // block_c)
    graphs_per_program = block_rows // joints
    grid = (triton.cdiv(graphs, graphs_per_program), triton.cdiv(channels, block_c))
    meta = dict(JOINTS=joints, GRAPHS_PER_PROGRAM=graphs_per_program, BLOCK_ROWS=block_rows,
                BLOCK_C=block_c, num_warps=NUM_WARPS)
    return grid, meta


def _check_args(x, mask, token, adjacency, eps):
    # The public wrapper gives the user-facing errors; these guard direct torch.ops calls.
    graphs, joints, channels = x.shape
    torch._check(adjacency.shape == (joints, joints),
                 lambda: f"adjacency must be [{joints}, {joints}], got {list(adjacency.shape)}")
    torch._check(token.shape == (channels,) and token.dtype == x.dtype,
                 lambda: f"token must be [{channels}] of x's dtype")
    torch._check(eps.numel() == 1, lambda: "eps must be a scalar tensor")
    torch._check(mask is None or mask.shape == (graphs, joints), lambda: f"mask must be [{graphs}, {joints}]")


def masked_graph_conv_forward(
    x: torch.Tensor, mask: torch.Tensor | None, token: torch.Tensor, adjacency: torch.Tensor,
    eps: torch.Tensor,
) -> torch.Tensor:
    _check_args(x, mask, token, adjacency, eps)
    x, token = x.contiguous(), token.contiguous()
    mask = None if mask is None else mask.contiguous()
    lists = _neighbour_lists(adjacency, False, torch.promote_types(x.dtype, torch.float32))
    y = torch.empty_like(x)
    grid, meta = _layout(x)
    wrap_triton(_graph_conv_forward_kernel)[grid](
        x, x if mask is None else mask, token, *lists, eps, y, x.shape[0], x.shape[2],
        HAS_MASK=mask is not None, **meta,
    )
    return y


def masked_graph_conv_backward(
    grad_output: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, token: torch.Tensor,
    adjacency: torch.Tensor, eps: torch.Tensor, output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_args(x, mask, token, adjacency, eps)
    torch._check(grad_output.shape == x.shape, lambda: "grad_output must have x's shape")
    need_x, need_token, need_eps = output_mask
    grad_y = grad_output.contiguous().to(x.dtype)
    x, token = x.contiguous(), token.contiguous()
    mask = None if mask is None else mask.contiguous()
    grid, meta = _layout(x)
    # Unrequested outputs are empty tensors (as the C++ ops return), also passed as the unused
    # pointers of their disabled stores.
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)
    sum_token = need_token and mask is not None  # no masked joint: the token gradient is zero
    token_partials = x.new_empty((grid[0], x.shape[2]) if sum_token else (0,), dtype=torch.float64)
    eps_partials = x.new_empty(grid if need_eps else (0,), dtype=torch.float64)
    if need_x or sum_token or need_eps:
        lists = _neighbour_lists(adjacency, True, torch.promote_types(x.dtype, torch.float32))
        wrap_triton(_graph_conv_backward_kernel)[grid](
            grad_y, x, x if mask is None else mask, token, *lists, eps, grad_x, token_partials,
            eps_partials, x.shape[0], x.shape[2], HAS_MASK=mask is not None, GRAD_X=need_x,
            GRAD_TOKEN=sum_token, GRAD_EPS=need_eps, **meta,
        )
    # Second stage of the reductions.
    if sum_token:
        grad_token = token_partials.sum(0).to(token.dtype)
    else:
        grad_token = torch.zeros_like(token) if need_token else token.new_empty(0)
    if need_eps:
        grad_eps = eps_partials.sum().to(eps.dtype).reshape(eps.shape)
    else:
        grad_eps = eps.new_empty(0)
    return grad_x, grad_token, grad_eps
