"""SkeletonMAE, STRL and the SSL classifier on skelmae_ext's fused ops.

Each is the reference model of ``skelmae_reference`` given BackendOps (its hot spots bound to
one skelmae_ext backend), with a few Linear layers folded exactly: the same constructor
arguments plus ``backend``, the same state_dict keys and the same outputs, faster. A reference
state_dict loads unchanged.
"""

import torch
import torch.nn.functional as F

import skelmae_reference
import skelmae_reference.strl

from . import ops, pretrained


class BackendOps:
    """The hot spots the reference models call (a skelmae_reference.ops.Ops), run on one
    skelmae_ext backend: "auto", "cpu", "cuda", "triton" or "reference" (see skelmae_ext.ops)."""

    def __init__(self, backend="auto"):
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.backend = backend

    def masked_graph_conv(self, x, mask, token, adjacency, eps=0.0):
        return ops.masked_graph_conv(x, mask, token, adjacency, eps, backend=self.backend)

    def cosine_reconstruction_loss(self, pred, target, mask=None, beta=2.0, reduction="mean"):
        return ops.cosine_reconstruction_loss(pred, target, mask, beta, reduction, backend=self.backend)

    def batch_norm_prelu(self, x, norm, activation=None):
        return ops.batch_norm_prelu(x, norm, activation, backend=self.backend)

    def linear(self, x, weight, bias=None):
        return ops.linear(x, weight, bias, backend=self.backend)

    def fold_weights(self, outer, inner, plus_identity=False):
        return ops.fold_weights(outer, inner, plus_identity, backend=self.backend)


class SkeletonMAE(skelmae_reference.SkeletonMAE):
    """skelmae_reference.SkeletonMAE (same arguments) on skelmae_ext's kernels: ``backend`` is
    "auto", "cpu", "cuda", "triton" or "reference" (see skelmae_ext.ops)."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, ops=BackendOps(backend), **kwargs)

    def encode(self, graphs, mask):
        # A joint's token-substituted embedding is [x, 1, 0] (kept) or [0, 0, 1] (masked) times
        # [W_e^T; b_e; token]. With these C + 2 augmented channels the first GIN layer's
        # aggregation (linear over joints) runs before that matrix and its first Linear (linear
        # over channels), which fold into one (C + 2) x D matrix: same function, without a
        # [G * V, D] x [D, D] product each way, nor the D-channel aggregation and its backward.
        first, *others = self.encoder.gin.layers
        embedding, mlp, post = self.encoder.embedding, first.mlp, first.post
        rows = [embedding.weight.t(), embedding.bias[None]]
        if mask is None:
            augmented = torch.cat([graphs, graphs.new_ones(*graphs.shape[:-1], 1)], dim=-1)
        else:
            masked = mask[..., None]
            kept = (~masked).to(graphs.dtype)
            augmented = torch.cat([graphs.masked_fill(masked, 0), kept, 1 - kept], dim=-1)
            rows.append(self.mask_token[None])
        aggregated = self.ops.masked_graph_conv(augmented, None, None, first.adjacency, first.eps)
        folded = self.ops.fold_weights(mlp.first.weight, torch.cat(rows).t())
        projected = self.ops.linear(aggregated.reshape(-1, augmented.shape[-1]), folded, mlp.first.bias)
        # the rest of the first layer, as GINLayer.forward
        hidden = self.ops.batch_norm_prelu(projected, mlp.norm, mlp.activation)
        h = self.ops.batch_norm_prelu(self.ops.linear(hidden, mlp.second.weight, mlp.second.bias), post.norm,
                                      post.activation)
        h = h.reshape(*graphs.shape[:-1], -1)
        for layer in others:
            h = layer(h)
        return h

    def decode(self, hidden, mask):
        # encoder_to_decoder (no bias) and the decoder's Linear mix channels; the re-mask and the
        # GIN aggregation mix joints: they commute. So both matrices fold into one [C_out, D]
        # applied first, and the aggregation runs on C_out channels (2 for x, y) instead of D.
        # Same function, about 3 fewer [G*V, D] x [D, D] matrix products per step.
        layer = self.decoder
        folded = self.ops.fold_weights(layer.mlp.weight, self.encoder_to_decoder.weight)
        projected = self.ops.linear(hidden, folded)
        aggregated = self.ops.masked_graph_conv(projected, mask if self.remask else None, None, layer.adjacency,
                                                layer.eps)
        return aggregated + layer.mlp.bias


class MultiScaleTemporalConv(skelmae_reference.strl.MultiScaleTemporalConv):
    """The reference module (no state of its own) with the branches' 1x1 convolutions as one
    product."""

    def forward(self, x):
        # The four 1x1 convolutions of x as one Linear over its channels-last rows with the weights
        # stacked: the same sums, x read once, one input gradient (docs/kernels.md times it
        # against oneDNN's convolutions). Each branch's slice goes back to channels-last, which the
        # fused BatchNorm reads in place.
        openers = [branch.opener for branch in self.branches]
        weight = torch.cat([conv.weight for conv in openers]).flatten(1)
        bias = torch.cat([conv.bias for conv in openers])
        batch, channels, frames, joints = x.shape
        rows = self.ops.linear(x.permute(0, 2, 3, 1).reshape(-1, channels), weight, bias)
        opened = rows.view(batch, frames, joints, -1).permute(0, 3, 1, 2).split(
            [conv.out_channels for conv in openers], dim=1)
        outputs = [self.branch(branch, part.contiguous(memory_format=torch.channels_last))
                   for branch, part in zip(self.branches, opened)]
        # In place: two fewer [B, D, T, V] tensors, whose fresh pages fault in (autograd keeps
        # what it needs: relu_ saves its output, cat and add_ nothing of theirs).
        return torch.cat(outputs, dim=1).add_(x).relu_()


class STRLLayer(skelmae_reference.strl.STRLLayer):
    """The reference layer (no state of its own) with Eq. 4's two Linear layers folded."""

    def spatial_update(self, h, interaction):
        # W (H + Repeat(i) + R H + r) + w = (W + W R) H + Repeat(W (i + r) + w): the two [D, D]
        # Linears fold into one matrix on H, and the repeated term goes through W on the small
        # [N, T, D] tensor before it is repeated. Same function, two fewer [N*M*T*V, D] x [D, D]
        # products per layer and step, and no [N, M, T, V, D] intermediate sums.
        update, residual = self.update, self.residual
        folded = self.ops.fold_weights(update.weight, residual.weight, plus_identity=True)
        repeated = F.linear(interaction + residual.bias, update.weight, update.bias)
        # relu_ in place on the sum (not add_ on the Linear's output: a view, whose in-place
        # backward clones the gradient)
        return (self.ops.linear(h, folded) + repeated[:, None, :, None, :]).relu_()


def _fold_layers(strl):
    """Gives STRL's layers the methods of the twins above. The twins hold no state of their
    own, so the modules stay the ones the reference made (parameters, initialisation and
    state_dict keys untouched): only their class changes."""
    for layer in strl.layers:
        layer.__class__ = STRLLayer
        layer.temporal.__class__ = MultiScaleTemporalConv


class STRL(skelmae_reference.STRL):
    """skelmae_reference.STRL (same arguments) on skelmae_ext's kernels: ``backend`` as for
    SkeletonMAE."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, ops=BackendOps(backend), **kwargs)
        _fold_layers(self)


class SSLClassifier(skelmae_reference.SSLClassifier):
    """skelmae_reference.SSLClassifier (same arguments) on skelmae_ext's kernels: ``backend`` as
    for SkeletonMAE."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, ops=BackendOps(backend), **kwargs)
        _fold_layers(self.strl)

    def load_pretrained(self, source):
        """As the reference's; ``source`` may also name an encoder shipped with the package
        ("coco17": skelmae_ext.pretrained)."""
        return super().load_pretrained(pretrained.resolve(source))


class TrunkMAE(skelmae_reference.TrunkMAE):
    """skelmae_reference.TrunkMAE (same arguments) on skelmae_ext's kernels: ``backend`` as for
    SkeletonMAE."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, ops=BackendOps(backend), **kwargs)
        _fold_layers(self.strl)
