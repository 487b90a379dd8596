"""The models' hot spots in plain PyTorch (autograd gives the gradients), and the interface
through which the models call them (Ops)."""

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

NORM_EPS = 1e-12


def masked_graph_conv(x, mask, token, adjacency, eps=0.0):
    """Mask-token substitution then GIN aggregation over each skeleton graph.

        x~[g, v] = token if mask[g, v] else x[g, v]
        y[g, v]  = (1 + eps) * x~[g, v] + sum_u A[v, u] * x~[g, u]

    x: [G, V, C]; mask: [G, V] bool or None; token: [C], or None for zeros (a re-mask);
    adjacency: [V, V] (0/1 or bool); eps: float or 0-d tensor.
    """
    if mask is not None:
        replaced = mask.unsqueeze(-1)
        x = x.masked_fill(replaced, 0) if token is None else torch.where(replaced, token.to(x.dtype), x)
    adjacency = adjacency.to(x.dtype)
    neighbours = torch.einsum("vu,guc->gvc", adjacency, x)
    return (1 + eps) * x + neighbours


def cosine_reconstruction_loss(pred, target, mask=None, beta=2.0, reduction="mean"):
    """GraphMAE's scaled cosine error (SCE), the paper's re-weighted cosine loss.

        l_r  = (1 - <pred_r, target_r> / (max(|pred_r|, 1e-12) * max(|target_r|, 1e-12)))^beta
        mean = sum_r mask_r * l_r / max(sum_r mask_r, 1)

    pred, target: [..., C]; mask: bool over the leading dims, or None (every row counts).
    reduction: "mean" (over masked rows), "sum", or "none" (mask_r * l_r per row).
    """
    pred_unit = F.normalize(pred, p=2.0, dim=-1, eps=NORM_EPS)
    target_unit = F.normalize(target, p=2.0, dim=-1, eps=NORM_EPS)
    cosine = (pred_unit * target_unit).sum(dim=-1)
    # Removes rounding below zero (|cos| <= 1), which pow would turn into NaN, and passes no
    # gradient at distance 0, where pow's slope is infinite for beta < 1 (as the kernels do).
    distance = 1 - cosine
    per_row = torch.where(distance <= 0, torch.zeros_like(distance), distance).pow(beta)  # NaN stays
    if mask is None:
        mask = torch.ones(per_row.shape, dtype=torch.bool, device=per_row.device)
    per_row = torch.where(mask, per_row, torch.zeros_like(per_row))
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp_min(1)


def batch_norm_prelu(x, norm, activation=None):
    """``activation(norm(x))``: BatchNorm (an ``nn.BatchNorm1d`` over the rows of x [R, C], or an
    ``nn.BatchNorm2d`` over [B, C, H, W]) then an ``nn.PReLU``, an ``nn.ReLU`` or nothing (None),
    as in the GIN layers and the temporal convolutions."""
    y = norm(x)
    return y if activation is None else activation(y)


def linear(x, weight, bias=None):
    """``F.linear``: ``x W^T + b`` over the last dim of x (the models' Linear layers)."""
    return F.linear(x, weight, bias)


@runtime_checkable
class Ops(Protocol):
    """The hot spots the models call through their ``ops``, with the signatures of this module's
    functions: ReferenceOps here, skelmae_ext's fused kernels in skelmae_ext.models."""

    def masked_graph_conv(self, x, mask, token, adjacency, eps=0.0): ...

    def cosine_reconstruction_loss(self, pred, target, mask=None, beta=2.0, reduction="mean"): ...

    def batch_norm_prelu(self, x, norm, activation=None): ...

    def linear(self, x, weight, bias=None): ...


class ReferenceOps:
    """Ops as this module's plain functions, the models' default. An instance, not the module,
    so that models deepcopy and pickle."""

    masked_graph_conv = staticmethod(masked_graph_conv)
    cosine_reconstruction_loss = staticmethod(cosine_reconstruction_loss)
    batch_norm_prelu = staticmethod(batch_norm_prelu)
    linear = staticmethod(linear)
