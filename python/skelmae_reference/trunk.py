"""Trunk pre-training in plain PyTorch: SkeletonMAE's masked reconstruction over the whole STRL
trunk the classifier fine-tunes, not only its per-frame encoder (MAMP's lesson: mask in time too,
predict motion, normalise the target).

Masking: tubes of one joint over ``chunk`` consecutive frames; ``mask_ratio`` of each present
person's tubes are drawn at every step. A masked tube's joint embedding is replaced by a learnt
token before the position embeddings are added, so the trunk knows where, not what.

Trunk: the classifier's STRL (embedding, position embeddings, every STRL layer with its temporal
convolutions and its GIN copy). A light per-joint decoder (Linear, GELU, Linear) maps each
output feature to the joint's target in that frame.

Target (per masked tube, ``chunk`` frames x C values, normalised to zero mean and unit variance
within the tube as MAE's normalised pixels):
  "motion"    x[t + 1] - x[t] (zero where frame t + 1 is padding or past the clip);
  "position"  x[t];
  "both"      the two, each normalised on its own.
Loss: the squared error averaged over the tube's values and over the masked tubes whose frames
are all real (padding takes no part).
"""

from typing import NamedTuple

import torch
from torch import nn

from .models import check_positive_ints, shared_rand
from .ops import ReferenceOps
from .strl import STRL, pooled

TRUNK_TARGETS = ("motion", "position", "both")
NORM_EPS = 1e-6  # MAE's: a tube that does not move has a zero target, not a blown-up one


class TrunkMAEOutput(NamedTuple):
    loss: torch.Tensor  # 0-d: mean over the masked tubes of real frames
    reconstruction: torch.Tensor  # [N, M, T, V, C_out]: the decoder's output (normalised units)
    mask: torch.Tensor  # [N, M, T, V] bool: the joints masked (whole tubes)


class TrunkDecoder(nn.Module):
    """The light per-joint decoder: Linear, GELU, Linear on each output feature."""

    def __init__(self, dim, out_dim, ops):
        super().__init__()
        self.ops = ops
        self.hidden = nn.Linear(dim, dim)
        self.activation = nn.GELU()
        self.output = nn.Linear(dim, out_dim)

    def forward(self, h):
        h = self.activation(self.ops.linear(h, self.hidden.weight, self.hidden.bias))
        return self.ops.linear(h, self.output.weight, self.output.bias)


class TrunkMAE(nn.Module):
    """Masked motion / position reconstruction over the STRL trunk (pre-training).

    Args: the STRL's (layout, in_channels, embed_dim, num_layers, num_frames, num_strl_layers,
    learn_eps, pooling, joint_embedding: as SSLClassifier's, so that every trunk weight loads
    into a classifier of the same arguments), and
        mask_ratio: the share of each present person's tubes masked, in (0, 1).
        chunk: frames per tube; num_frames must be a multiple of it.
        target: "motion", "position" or "both" (see the module docstring).
        ops: the implementation of the hot spots (an Ops); None: this package's plain PyTorch.

    Its random masks are drawn for its ``batch_share`` of a global batch (see models.shared_rand).
    """

    def __init__(self, layout="coco", in_channels=2, embed_dim=64, num_layers=3, num_frames=64, num_strl_layers=3,
                 learn_eps=False, pooling="mean", joint_embedding=True, mask_ratio=0.9, chunk=4, target="motion",
                 ops=None):
        super().__init__()
        check_positive_ints(chunk=chunk)
        if num_frames % chunk:
            raise ValueError(f"num_frames must be a multiple of chunk={chunk}, got {num_frames}")
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be a number with 0 < mask_ratio < 1, got {mask_ratio!r}")
        if target not in TRUNK_TARGETS:
            raise ValueError(f"target must be one of {TRUNK_TARGETS}, got {target!r}")
        self.ops = ops = ReferenceOps() if ops is None else ops
        self.strl = STRL(layout, in_channels, embed_dim, num_layers, num_frames, num_strl_layers, learn_eps, pooling,
                         joint_embedding, ops)
        self.layout, self.in_channels = self.strl.layout, in_channels
        self.mask_ratio, self.chunk, self.target = mask_ratio, chunk, target
        self.batch_share = (0, 1)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = TrunkDecoder(embed_dim, in_channels * (2 if target == "both" else 1), ops)

    def sample_mask(self, n, m, t, v, device):
        """[N, M, T, V] bool: round(mask_ratio * tubes) of each (sample, person)'s T / chunk x V
        tubes, drawn uniformly, each spread over its chunk of frames."""
        tubes = (t // self.chunk) * v
        masked = min(tubes, max(1, round(self.mask_ratio * tubes)))
        rank = shared_rand(self.batch_share, n, m, tubes, device=device).argsort(-1).argsort(-1)
        chosen = (rank < masked).reshape(n, m, t // self.chunk, 1, v)
        return chosen.expand(n, m, t // self.chunk, self.chunk, v).reshape(n, m, t, v)

    def targets(self, x, real):
        """The target's parts for each frame, each [N, M, T, V, C] (motion, position or both);
        real [N, M, T]: the frames that are not padding."""
        parts = []
        if self.target in ("motion", "both"):
            ahead = torch.cat([x[:, :, 1:], torch.zeros_like(x[:, :, :1])], dim=2)
            moving = torch.cat([real[:, :, 1:] & real[:, :, :-1], torch.zeros_like(real[:, :, :1])], dim=2)
            parts.append((ahead - x) * moving[..., None, None].to(x.dtype))
        if self.target in ("position", "both"):
            parts.append(x)
        return parts

    def normalised(self, values):
        """values [N, M, T, V, C] as tubes [N, M, T / chunk, chunk, V, C], each tube normalised to
        zero mean and unit variance over its chunk x C values."""
        n, m, t, v, c = values.shape
        tubes = values.reshape(n, m, t // self.chunk, self.chunk, v, c)
        mean = tubes.mean(dim=(3, 5), keepdim=True)
        var = tubes.var(dim=(3, 5), keepdim=True, unbiased=False)
        return (tubes - mean) / (var + NORM_EPS).sqrt()

    def features(self, x):
        """[N, M, T, V, C] -> [N, D]: the trunk's output without masking, pooled as the
        classifier's features (KNN and t-SNE of a pre-training)."""
        self.strl.check_input(x, type(self).__name__)
        return pooled(self.strl(x), x)

    def forward(self, x):
        """x: [N, M, T, V, C] -> TrunkMAEOutput(loss, reconstruction, mask)."""
        self.strl.check_input(x, type(self).__name__)
        n, m, t, v, c = x.shape
        real = x.flatten(3).ne(0).any(-1)  # [N, M, T]: frames that are not padding (so their person is present)
        mask = self.sample_mask(n, m, t, v, x.device) & real[..., None]
        reconstruction = self.decoder(self.strl(x, mask, self.mask_token))
        target = torch.cat([self.normalised(part) for part in self.targets(x, real)], dim=-1)
        predicted = reconstruction.reshape(target.shape)
        # a tube counts where it is masked and every frame of its chunk is real
        counted = mask.reshape(n, m, t // self.chunk, self.chunk, v).all(dim=3)  # [N, M, T / chunk, V]
        per_tube = (predicted - target).square().mean(dim=(3, 5))
        loss = torch.where(counted, per_tube, torch.zeros_like(per_tube)).sum() / counted.sum().clamp_min(1)
        return TrunkMAEOutput(loss, reconstruction, mask)
