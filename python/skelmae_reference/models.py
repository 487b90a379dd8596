"""SkeletonMAE pre-training model in plain PyTorch (docs/design.md section 5, paper section 3.1).

Every (sample, person, frame) is one graph of the layout's V joints. Joints are embedded
(Linear C -> D); the joints of the masked body parts are replaced by one learnable mask token; a
GIN encoder (3 GraphMAE encoding layers) runs over the skeleton graph; a bias-free Linear, a
re-mask (masked rows set to zero) and a 1-layer GIN decoder reconstruct the masked joints'
input features; the loss is the re-weighted cosine error over the masked joints of the graphs
that are not padding.

The hot spots (the masked GIN aggregation, the loss, the BatchNorm + PReLU tails and the Linear
layers) go through ``ops`` (an ops.Ops): this package's plain functions unless the model is given
others. ``skelmae_ext.SkeletonMAE`` gives its fused kernels (and folds a few Linear layers
exactly in ``encode`` and ``decode``): a drop-in, faster twin with the same state_dict keys.
"""

import numbers
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn

from .ops import ReferenceOps
from .layouts import get_layout, is_index

MASK_STRATEGIES = ("parts", "random_parts", "random_joints")
TARGETS = ("input", "centred", "embedding")
LOSSES = ("cosine", "mse")


class EncodingMLP(nn.Sequential):
    """The MLP of a GraphMAE GIN encoding layer: Linear, BatchNorm, PReLU, Linear. An
    nn.Sequential, as GraphMAE's (its state_dict keys are the positions 0 to 3), with its
    parts named."""

    def __init__(self, in_dim, out_dim):
        super().__init__(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.PReLU(), nn.Linear(out_dim, out_dim))

    first = property(lambda self: self[0])
    norm = property(lambda self: self[1])
    activation = property(lambda self: self[2])
    second = property(lambda self: self[3])


class NormActivation(nn.Sequential):
    """BatchNorm then an activation (PReLU, ReLU) or none; an nn.Sequential with its parts named."""

    def __init__(self, norm, activation=None):
        super().__init__(norm, *([] if activation is None else [activation]))

    norm = property(lambda self: self[0])
    activation = property(lambda self: self[1] if len(self) > 1 else None)


class GINLayer(nn.Module):
    """GraphMAE's GIN layer: ``MLP((1 + eps) h + sum_{u in N(v)} h_u)``.

    Encoding layers: MLP = Linear, BatchNorm, PReLU, Linear, then BatchNorm and PReLU (``post``).
    The decoding layer: a single Linear, no norm, no activation. ``mask`` / ``token`` replace the
    masked joints' features before aggregating (the token is zeros for the decoder's re-mask).
    """

    def __init__(self, in_dim, out_dim, adjacency, ops=None, encoding=True, learn_eps=False):
        super().__init__()
        self.ops = ReferenceOps() if ops is None else ops
        self.register_buffer("adjacency", adjacency, persistent=False)
        self.eps = nn.Parameter(torch.zeros(())) if learn_eps else 0.0
        self.encoding = encoding
        if encoding:
            self.mlp = EncodingMLP(in_dim, out_dim)
            self.post = NormActivation(nn.BatchNorm1d(out_dim), nn.PReLU())
        else:
            self.mlp = nn.Linear(in_dim, out_dim)

    def forward(self, h, mask=None, token=None):
        """h: [G, V, C] -> [G, V, D]."""
        graphs, joints, channels = h.shape
        ops = self.ops
        rows = ops.masked_graph_conv(h, mask, token, self.adjacency, self.eps).reshape(graphs * joints, channels)
        if not self.encoding:
            return ops.linear(rows, self.mlp.weight, self.mlp.bias).reshape(graphs, joints, -1)
        mlp, post = self.mlp, self.post
        hidden = ops.batch_norm_prelu(ops.linear(rows, mlp.first.weight, mlp.first.bias), mlp.norm, mlp.activation)
        out = ops.batch_norm_prelu(ops.linear(hidden, mlp.second.weight, mlp.second.bias), post.norm, post.activation)
        return out.reshape(graphs, joints, -1)


class GINEncoder(nn.Module):
    """``num_layers`` GIN encoding layers of width ``dim``; the first substitutes the mask token."""

    def __init__(self, dim, num_layers, adjacency, ops=None, learn_eps=False):
        super().__init__()
        self.layers = nn.ModuleList(
            [GINLayer(dim, dim, adjacency, ops, learn_eps=learn_eps) for _ in range(num_layers)]
        )

    def forward(self, h, mask=None, token=None):
        """h: [G, V, D] -> [G, V, D]."""
        h = self.layers[0](h, mask, token)
        for layer in self.layers[1:]:
            h = layer(h)
        return h


class SkeletonEncoder(nn.Module):
    """Joint embedding (Linear C -> D) plus the GIN encoder: G_E, reusable on its own."""

    def __init__(self, in_channels, embed_dim, num_layers, adjacency, ops=None, learn_eps=False):
        super().__init__()
        self.ops = ReferenceOps() if ops is None else ops
        self.embedding = nn.Linear(in_channels, embed_dim)
        self.gin = GINEncoder(embed_dim, num_layers, adjacency, self.ops, learn_eps)

    def forward(self, x, mask=None, token=None):
        """x: [..., V, C] -> [..., V, D]; mask [G, V] over the flattened graphs, token [D]."""
        *leading, joints, channels = x.shape
        h = self.ops.linear(x.reshape(-1, joints, channels), self.embedding.weight, self.embedding.bias)
        return self.gin(h, mask, token).reshape(*leading, joints, -1)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class SkeletonMAEOutput(NamedTuple):
    loss: torch.Tensor  # 0-d: mean over masked joints of non-padding graphs
    reconstruction: torch.Tensor  # [N, M, T, V, C_out]
    mask: torch.Tensor  # [N, M, T, V] bool: the joints masked and scored


def shared_rand(share, samples, *shape, device):
    """torch.rand(samples, *shape) for this process's share of a global batch.

    ``share`` is a model's ``batch_share`` (rank, processes K), a plain attribute, (0, 1) unless
    the training engine sets it under torchrun: the processes hold the global batch's samples
    dealt out (process r: samples r, r + K, ..., as skelmae_ext.data's EpochSampler deals them).
    The draw is made for the global batch and rows rank, rank + K, ... are taken, so that K
    processes draw what one process would; one process draws exactly torch.rand(samples, *shape)."""
    rank, processes = share
    if processes == 1:
        return torch.rand(samples, *shape, device=device)
    return torch.rand(samples * processes, *shape, device=device)[rank::processes]


def shared_dropout(x, dropout, share):
    """dropout(x) (an nn.Dropout in training mode) over rows of samples, its mask drawn for this
    process's share of the global batch (see batch_share); one process runs the module itself."""
    rank, processes = share
    if processes == 1 or not dropout.training or dropout.p == 0:
        return dropout(x)
    # as ATen's CPU dropout: Bernoulli(1 - p) noise scaled by 1 / (1 - p), of the global batch's shape
    noise = x.new_empty(x.shape[0] * processes, *x.shape[1:]).bernoulli_(1 - dropout.p)[rank::processes]
    return x * noise.div_(1 - dropout.p)


def check_positive_ints(**values):
    """Each named value is an int >= 1 (a size or count of the model)."""
    for name, value in values.items():
        if not is_index(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_skeleton_input(x, layout, in_channels, owner, dtype):
    """Shape, dtype (floating point, the model's `dtype`) and finiteness checks of an
    [N, M, T, V, C] batch. Finiteness is asserted on the device (torch._assert_async): a
    RuntimeError on the CPU; on a GPU the step queues on without waiting for the check."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{owner}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{owner}: x must be [N, M, T, V, C] (5 dims), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{owner}: x holds no sample (N=0, shape {tuple(x.shape)})")
    if x.shape[3] != layout.num_joints:
        raise ValueError(f"{owner}: x has V={x.shape[3]} joints but layout {layout.name!r} has "
                         f"{layout.num_joints} (shape {tuple(x.shape)})")
    if x.shape[4] != in_channels:
        raise ValueError(f"{owner}: x has C={x.shape[4]} channels but the model expects "
                         f"in_channels={in_channels} (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"{owner}: x must be floating point, got {x.dtype}")
    if x.dtype != dtype:
        raise ValueError(f"{owner}: x is {x.dtype} but the model's parameters are {dtype}; convert one to "
                         f"the other (x.to(dtype) or model.to(x.dtype))")
    if not torch.compiler.is_compiling():
        torch._assert_async(torch.isfinite(x).all(), f"{owner}: x contains NaN or inf")


class SkeletonMAE(nn.Module):
    """Graph masked autoencoder over skeleton sequences (pre-training).

    Padding: the graphs of all-zero persons and frames are never masked and take no part in
    the loss, but they do pass the encoder, so in training mode they count in its BatchNorm
    batch statistics (as all-zero graphs, whose embedding is the bias): a batch's training loss
    depends on how much of it is padding, and an extra padded person changes it. This is
    deliberate. Leaving them out would take data-dependent shapes (no ``fullgraph`` compile,
    no CUDA graphs) or masked statistics in every BatchNorm; PYSKL's GCNs also normalise over
    their zero-padded persons; and the running statistics average over the same mix of
    padding as the batches, so evaluation normalises as training did. In eval mode padding
    changes nothing (tests/test_skeletonmae.py and tests/test_models.py check both).

    Args:
        layout: a built-in layout name, a dict or JSON path of a custom one, or a Layout.
        in_channels: C of the input (2 for x, y).
        embed_dim: D, the width of the embedding, encoder and decoder.
        num_layers: GIN encoder layers.
        mask_strategy: "parts" (the fixed body parts ``mask_parts`` in every graph),
            "random_parts" (``num_mask_parts`` parts drawn per graph at every step) or
            "random_joints" (a ``mask_ratio`` of joints drawn per graph at every step).
        mask_parts: part indices of the layout's partition (default (3, 5): right arm + right leg).
        beta: exponent of the cosine error.
        target: "input" (the masked joints' input features), "centred" (their input features
            relative to the mean of the frame's visible joints; the reconstruction returned is
            moved back to input coordinates) or "embedding" (their embedding, stop-gradient:
            the paper's literal target).
        loss: "cosine" (the paper's re-weighted cosine error, exponent ``beta``) or "mse" (the
            squared distance, summed over channels, averaged over the masked joints).
        remask: the decoder sees the masked joints' codes as zeros (GraphMAE's re-mask); with
            False it sees the encoder's output there too.
        learn_eps: learn GIN's eps (GraphMAE keeps it 0).
        ops: the implementation of the hot spots (an Ops); None: this package's plain PyTorch.

    Its random masks are drawn for its ``batch_share`` of a global batch (see shared_rand).
    """

    def __init__(self, layout="coco", in_channels=2, embed_dim=64, num_layers=3,
                 mask_strategy="parts", mask_parts=(3, 5), mask_ratio=None, num_mask_parts=None,
                 beta=2.0, target="centred", learn_eps=False, loss="cosine", remask=False, ops=None):
        super().__init__()
        self.layout = get_layout(layout)
        self.in_channels, self.embed_dim, self.beta, self.target = in_channels, embed_dim, beta, target
        self.loss, self.remask = loss, remask
        self.batch_share = (0, 1)
        self.mask_strategy = mask_strategy
        self.mask_ratio, self.num_mask_parts = mask_ratio, num_mask_parts
        self.mask_parts = self._check_config(mask_parts, num_layers)
        self.ops = ops = ReferenceOps() if ops is None else ops
        adjacency = self.layout.adjacency()
        membership = self.layout.part_membership()
        self.register_buffer("part_membership", membership, persistent=False)
        self.register_buffer("fixed_mask", membership[list(self.mask_parts)].any(0), persistent=False)
        self.encoder = SkeletonEncoder(in_channels, embed_dim, num_layers, adjacency, ops, learn_eps)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        self.encoder_to_decoder = nn.Linear(embed_dim, embed_dim, bias=False)
        out_dim = embed_dim if target == "embedding" else in_channels
        self.decoder = GINLayer(embed_dim, out_dim, adjacency, ops, encoding=False, learn_eps=learn_eps)

    def _check_config(self, mask_parts, num_layers):
        """The constructor's arguments; returns mask_parts as a tuple."""
        check_positive_ints(in_channels=self.in_channels, embed_dim=self.embed_dim, num_layers=num_layers)
        parts = len(self.layout.parts)
        if self.mask_strategy not in MASK_STRATEGIES:
            raise ValueError(f"mask_strategy must be one of {MASK_STRATEGIES}, got {self.mask_strategy!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not isinstance(self.remask, bool):
            raise ValueError(f"remask must be True or False, got {self.remask!r}")
        if not _is_real(self.beta) or not self.beta > 0:
            raise ValueError(f"beta must be a number > 0, got {self.beta!r}")
        sequence = isinstance(mask_parts, Iterable) and not isinstance(mask_parts, (str, bytes))
        chosen = tuple(mask_parts) if sequence else ()
        if not chosen or any(not is_index(p) or not 0 <= p < parts for p in chosen):
            raise ValueError(f"mask_parts must be part indices in 0..{parts - 1} of layout "
                             f"{self.layout.name!r}, got {mask_parts!r}")
        if self.mask_strategy == "random_parts" and not (
                is_index(self.num_mask_parts) and 1 <= self.num_mask_parts <= parts):
            raise ValueError(f"random_parts needs num_mask_parts in 1..{parts}, got {self.num_mask_parts!r}")
        if not (self.mask_ratio is None and self.mask_strategy != "random_joints") and not (
                _is_real(self.mask_ratio) and 0 < self.mask_ratio < 1):
            raise ValueError(f"mask_ratio must be a number with 0 < mask_ratio < 1 (random_joints needs one), "
                             f"got {self.mask_ratio!r}")
        return tuple(int(p) for p in chosen)

    def sample_mask(self, samples, graphs, device):
        """[samples * graphs, V] bool: the joints to mask in each of the ``graphs`` graphs of each
        sample, by the masking strategy (drawn for this process's share of the batch: batch_share)."""
        joints = self.layout.num_joints
        if self.mask_strategy == "parts":
            return self.fixed_mask.expand(samples * graphs, joints)
        if self.mask_strategy == "random_parts":
            draw = shared_rand(self.batch_share, samples, graphs, len(self.layout.parts), device=device)
            rank = draw.reshape(samples * graphs, -1).argsort(1).argsort(1)
            chosen = (rank < self.num_mask_parts).float()
            return (chosen @ self.part_membership.float()) > 0
        masked = max(1, round(self.mask_ratio * joints))
        draw = shared_rand(self.batch_share, samples, graphs, joints, device=device)
        return draw.reshape(samples * graphs, joints).argsort(1).argsort(1) < masked

    def encode(self, graphs, mask):
        """[G, V, C] graphs -> [G, V, D] codes, the masked joints replaced by the mask token."""
        return self.encoder(graphs, mask, self.mask_token)

    def decode(self, hidden, mask):
        """[G, V, D] encoder output -> [G, V, C_out] reconstruction; with ``remask`` the
        decoder's GIN layer re-masks (its token is zero)."""
        return self.decoder(self.encoder_to_decoder(hidden), mask if self.remask else None)

    def reconstruction_loss(self, reconstruction, target, mask):
        if self.loss == "cosine":
            return self.ops.cosine_reconstruction_loss(reconstruction, target, mask, self.beta)
        squared = (reconstruction - target).square().sum(dim=-1)
        return torch.where(mask, squared, torch.zeros_like(squared)).sum() / mask.sum().clamp_min(1)

    def forward(self, x):
        """x: [N, M, T, V, C] -> SkeletonMAEOutput(loss, reconstruction, mask)."""
        check_skeleton_input(x, self.layout, self.in_channels, type(self).__name__, self.mask_token.dtype)
        n, m, t, v, c = x.shape
        graphs = x.reshape(n * m * t, v, c)
        not_padding = graphs.abs().sum(dim=(1, 2)) > 0  # all-zero persons / frames are padding
        mask = self.sample_mask(n, m * t, x.device) & not_padding[:, None]
        hidden = self.encode(graphs, mask)
        reconstruction = self.decode(hidden, mask)
        centre = 0
        if self.target == "embedding":
            target = self.encoder.embedding(graphs).detach()
        else:
            if self.target == "centred":
                visible = ((graphs != 0).any(-1) & ~mask).to(graphs.dtype)[..., None]  # [G, V, 1]
                centre = (graphs * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True).clamp_min(1)
            target = graphs - centre
        loss = self.reconstruction_loss(reconstruction, target, mask)
        output = (reconstruction + centre).reshape(n, m, t, v, -1)
        return SkeletonMAEOutput(loss, output, mask.reshape(n, m, t, v))
