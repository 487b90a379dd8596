"""SkeletonMAE, STRL and the SSL classifier on skelmae_ext's fused ops.

Each is the reference model of ``skelmae_reference`` with its hot spots (masked GIN aggregation,
cosine reconstruction loss, the BatchNorm + PReLU tail of each GIN layer) bound to one
skelmae_ext backend: the same constructor
arguments, the same state_dict keys and the same outputs, faster. A reference state_dict loads
unchanged.
"""

import torch
import torch.nn.functional as F

import skelmae_reference
import skelmae_reference.strl

from . import ops


class BackendOps:
    """The hot spots the reference models call, run on one skelmae_ext backend."""

    def __init__(self, backend="auto"):
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.backend = backend

    def masked_graph_conv(self, x, mask, token, adjacency, eps=0.0):
        return ops.masked_graph_conv(x, mask, token, adjacency, eps, backend=self.backend)

    def cosine_reconstruction_loss(self, pred, target, mask=None, beta=2.0, reduction="mean"):
        return ops.cosine_reconstruction_loss(pred, target, mask, beta, reduction, backend=self.backend)

    def batch_norm_prelu(self, x, norm, activation):
        return ops.batch_norm_prelu(x, norm, activation, backend=self.backend)

    @staticmethod
    def embed(x, layer):
        # layer(x), with the weight transposed into a contiguous [C, D] matrix: PyTorch then
        # computes the weight gradient as [C, rows] x [rows, D], which MKL ran 5x faster here
        # (0.24 against 1.35 ms for 34816 rows) than the [D, rows] x [rows, C] product it
        # picks for F.linear's transposed weight. The same numbers either way.
        rows = x.reshape(-1, x.shape[-1])
        weight = layer.weight.t().contiguous()
        out = rows.mm(weight) if layer.bias is None else torch.addmm(layer.bias, rows, weight)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def fold(outer, inner, plus_identity=False):
    """outer @ inner (outer @ (I + inner) with plus_identity): two Linear weights folded into one,
    computed in float64. The folded matrix multiplies every row of a batch, so its rounding
    errors do not average out: folded in float32, they grew a hundredfold through
    training-mode BatchNorm in tests/test_models.py."""
    outer64 = outer.double()
    product = outer64 @ inner.double()
    return (product + outer64 if plus_identity else product).to(outer.dtype)


class SkeletonMAE(skelmae_reference.SkeletonMAE):
    __doc__ = skelmae_reference.SkeletonMAE.__doc__.replace(
        "backend: ignored here (always plain PyTorch); kept so both twins take the same arguments.",
        'backend: "auto", "cpu", "cuda", "triton" or "reference" (see skelmae_ext.ops).')
    make_ops = staticmethod(BackendOps)

    def decode(self, hidden, mask):
        # encoder_to_decoder (no bias) and the decoder's Linear mix channels; the re-mask and the
        # GIN aggregation mix joints: they commute. So both matrices fold into one [C_out, D]
        # applied first, and the aggregation runs on C_out channels (2 for x, y) instead of D.
        # Same function, about 3 fewer [G*V, D] x [D, D] matrix products per step.
        layer = self.decoder
        folded = fold(layer.mlp.weight, self.encoder_to_decoder.weight)
        projected = F.linear(hidden, folded)
        token = projected.new_zeros(projected.shape[-1])
        aggregated = layer.ops.masked_graph_conv(projected, mask, token, layer.adjacency, layer.eps)
        return aggregated + layer.mlp.bias


class MultiScaleTemporalConv(skelmae_reference.strl.MultiScaleTemporalConv):
    def forward(self, x):
        # Every branch opens with a 1x1 convolution of x: one convolution with the four weights
        # stacked computes them all (the same sums), reading x once and giving one input
        # gradient instead of four to add up. Each branch's slice is made channels-last
        # contiguous again, the layout the fused BatchNorm reads in place.
        openers = [branch[0] for branch in self.branches]
        weight = torch.cat([conv.weight for conv in openers])
        bias = torch.cat([conv.bias for conv in openers])
        opened = F.conv2d(x, weight, bias).split([conv.out_channels for conv in openers], dim=1)
        outputs = [self._run(branch[1:], part.contiguous(memory_format=torch.channels_last))
                   for branch, part in zip(self.branches, opened)]
        return torch.relu(torch.cat(outputs, dim=1) + x)


class STRLLayer(skelmae_reference.strl.STRLLayer):
    temporal_class = MultiScaleTemporalConv

    def spatial_update(self, h, interaction):
        # W (H + Repeat(i) + R H + r) + w = (W + W R) H + Repeat(W (i + r) + w): the two [D, D]
        # Linears fold into one matrix on H, and the repeated term goes through W on the small
        # [N, T, D] tensor before it is repeated. Same function, two fewer [N*M*T*V, D] x [D, D]
        # products per layer and step, and no [N, M, T, V, D] intermediate sums.
        update, residual = self.update, self.residual
        folded = fold(update.weight, residual.weight, plus_identity=True)
        repeated = F.linear(interaction + residual.bias, update.weight, update.bias)
        return torch.relu(F.linear(h, folded) + repeated[:, None, :, None, :])


class STRL(skelmae_reference.STRL):
    __doc__ = skelmae_reference.STRL.__doc__
    make_ops = staticmethod(BackendOps)
    layer_class = STRLLayer


class SSLClassifier(skelmae_reference.SSLClassifier):
    __doc__ = skelmae_reference.SSLClassifier.__doc__
    strl_class = STRL
