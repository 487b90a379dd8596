"""STRL and the SSL classifier in plain PyTorch (DESIGN.md section 6, paper section 3.2).

Input [N, M, T, V, C] -> joint embedding (from pre-training) + learnable temporal position
embedding (+ a learnable embedding of each joint) -> 3 STRL layers -> mean over the present
persons, frames and joints -> MLP -> class logits.

One STRL layer, on H [N, M, T, V, D]:
  spatial modelling (Eq. 3): a copy of the pre-trained encoder G_E runs on every (n, m, t)
    graph; its output is pooled over joints, the persons' pooled vectors are combined (their
    interaction) and broadcast back onto every joint of H: SM(H) = H + Repeat(SP(G_E(H)));
    the paper sums (``pooling="sum"``), the default averages (``"mean"``: a scale that does
    not grow with V and M); padded persons take no part;
  1x1 residual and update (Eq. 4): H' = ReLU(W (SM(H) + R H));
  multi-scale temporal convolution (CTR-GCN): kernel 5 with dilations 1 and 2, a max-pool and a
    1x1 branch, BatchNorm, with a residual.
"""

import os

import torch
from torch import nn

from .layouts import get_layout
from .models import GINEncoder, ReferenceOps, check_positive_ints, check_skeleton_input, reference_ops_for


class MultiScaleTemporalConv(nn.Module):
    """CTR-GCN's multi-scale temporal module on [B, D, T, V], plus a residual and ReLU. Each
    BatchNorm, with the ReLU after it, runs through ``ops.batch_norm_prelu``."""

    def __init__(self, dim, kernel_size=5, dilations=(1, 2), ops=None):
        super().__init__()
        self.ops = ops if ops is not None else ReferenceOps()
        branches = len(dilations) + 2
        if dim % branches:
            raise ValueError(f"embed_dim must be divisible by {branches} (temporal branches), got {dim}")
        width = dim // branches

        def pointwise():
            return [nn.Conv2d(dim, width, 1), nn.BatchNorm2d(width)]

        self.branches = nn.ModuleList(
            [nn.Sequential(*pointwise(), nn.ReLU(),
                           nn.Conv2d(width, width, (kernel_size, 1),
                                     padding=((kernel_size - 1) * d // 2, 0), dilation=(d, 1)),
                           nn.BatchNorm2d(width)) for d in dilations]
            + [nn.Sequential(*pointwise(), nn.ReLU(), nn.MaxPool2d((3, 1), stride=1, padding=(1, 0)),
                             nn.BatchNorm2d(width)),
               nn.Sequential(*pointwise())]
        )

    def forward(self, x):
        return torch.relu(torch.cat([self._run(branch, x) for branch in self.branches], dim=1) + x)

    def _run(self, branch, x):
        layers = list(branch)
        i = 0
        while i < len(layers):
            if isinstance(layers[i], nn.BatchNorm2d):
                after = layers[i + 1] if i + 1 < len(layers) else None
                activation = after if isinstance(after, nn.ReLU) else None
                x = self.ops.batch_norm_prelu(x, layers[i], activation)
                i += 1 if activation is None else 2
            else:
                x = layers[i](x)
                i += 1
        return x


POOLINGS = ("mean", "sum")


def present_persons(x):
    """[N, M, T, V, C] -> [N, M] bool: the persons that are not all-zero padding."""
    return x.flatten(2).ne(0).any(-1)


class STRLLayer(nn.Module):
    temporal_class = MultiScaleTemporalConv

    def __init__(self, dim, num_layers, adjacency, ops, learn_eps=False, pooling="mean"):
        super().__init__()
        self.ops = ops
        self.pooling = pooling
        self.encoder = GINEncoder(dim, num_layers, adjacency, ops, learn_eps)  # a copy of G_E
        self.residual = nn.Linear(dim, dim)  # the 1x1 convolution around spatial modelling
        self.update = nn.Linear(dim, dim)  # W of Eq. 4
        self.temporal = self.temporal_class(dim, ops=ops)

    def spatial_update(self, h, interaction):
        """Eq. 3 and 4: ReLU(W (H + Repeat(interaction) + R H)); the interaction [N, T, D] is
        repeated over persons and joints."""
        modelled = h + interaction[:, None, :, None, :]
        return torch.relu(self.update(modelled + self.residual(h)))

    def pool(self, spatial, persons):
        """SP(G_E(H)) of Eq. 3 with the persons' interaction: [N, M, T, V, D] -> [N, T, D].
        "sum" (the paper's words): summed over the joints and the present persons; its scale
        grows with V and M, and the classifier diverges under SGD. "mean": averaged over them."""
        present = persons.to(spatial.dtype)[:, :, None, None]
        if self.pooling == "sum":
            return (spatial.sum(dim=3) * present).sum(dim=1)
        return (spatial.mean(dim=3) * present).sum(dim=1) / present.sum(dim=1).clamp_min(1)

    def forward(self, h, persons):
        """h: [N, M, T, V, D]; persons: [N, M] bool, False for padding (whose output is zero)."""
        n, m, t, v, d = h.shape
        spatial = self.encoder(h.reshape(n * m * t, v, d)).reshape(n, m, t, v, d)
        h = self.spatial_update(h, self.pool(spatial, persons))
        h = self.temporal(h.reshape(n * m, t, v, d).permute(0, 3, 1, 2))  # [B, D, T, V]
        return h.permute(0, 2, 3, 1).reshape(n, m, t, v, d) * persons[:, :, None, None, None]


class STRL(nn.Module):
    """Embedding, temporal position embedding (plus, with ``joint_embedding``, a learnable
    embedding of each joint) and ``num_strl_layers`` STRL layers. ``pooling`` is the spatial
    pooling of Eq. 3 (see STRLLayer.pool). Padded (all-zero) persons get zero features
    throughout and take no part in the pooling; in training mode they count in the BatchNorm
    statistics, as in SkeletonMAE (its docstring says why). ``backend`` is ignored here (plain PyTorch);
    kept so both twins take the same arguments."""

    make_ops = staticmethod(reference_ops_for)
    layer_class = STRLLayer

    def __init__(self, layout="coco", in_channels=2, embed_dim=64, num_layers=3, num_frames=64,
                 num_strl_layers=3, learn_eps=False, backend="auto", pooling="mean", joint_embedding=True):
        super().__init__()
        check_positive_ints(in_channels=in_channels, embed_dim=embed_dim, num_layers=num_layers,
                            num_frames=num_frames, num_strl_layers=num_strl_layers)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.layout, self.in_channels, self.num_frames = get_layout(layout), in_channels, num_frames
        adjacency = self.layout.adjacency()
        ops = self.make_ops(backend)
        self.ops = ops
        self.embedding = nn.Linear(in_channels, embed_dim)
        self.position = nn.Parameter(torch.zeros(num_frames, embed_dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        # Which joint a feature belongs to: without it mirror-symmetric joints (left and right
        # wrist) look alike to the GIN copies (benchmarks/README.md measures what it is worth).
        self.joint_position = None
        if joint_embedding:
            self.joint_position = nn.Parameter(torch.zeros(self.layout.num_joints, embed_dim))
            nn.init.trunc_normal_(self.joint_position, std=0.02)
        self.layers = nn.ModuleList(
            [self.layer_class(embed_dim, num_layers, adjacency, ops, learn_eps, pooling)
             for _ in range(num_strl_layers)]
        )

    def check_input(self, x, owner="STRL"):
        """The checks of check_skeleton_input, and T = num_frames (the position embedding's)."""
        check_skeleton_input(x, self.layout, self.in_channels, owner, self.position.dtype)
        if x.shape[2] != self.num_frames:
            raise ValueError(f"{owner}: x has T={x.shape[2]} frames but num_frames={self.num_frames}")

    def forward(self, x):
        """x: [N, M, T, V, C] -> [N, M, T, V, D]."""
        self.check_input(x)
        persons = present_persons(x)
        position = self.position[:, None, :]
        if self.joint_position is not None:
            position = position + self.joint_position
        h = (self.ops.linear(x, self.embedding.weight, self.embedding.bias) + position) * persons[:, :, None, None, None]
        for layer in self.layers:
            h = layer(h, persons)
        return h


class SSLClassifier(nn.Module):
    """STRL plus a classifier head, fine-tuned from a pre-trained SkeletonMAE encoder.

    ``freeze_encoder=True`` is the linear-probe protocol: the embedding and every encoder copy
    keep their pre-trained weights and stay in eval mode. ``pooling="mean"`` and
    ``joint_embedding=True`` are what make it learn (see STRL); ``pooling="sum",
    joint_embedding=False`` is the paper's model as written. ``dropout`` drops pooled features
    before the head in training. ``backend`` is ignored here (plain
    PyTorch); it is kept so both twins take the same arguments.
    """

    def __init__(self, num_classes, layout="coco", in_channels=2, embed_dim=64, num_layers=3,
                 num_frames=64, num_persons=2, freeze_encoder=False, backend="auto",
                 num_strl_layers=3, learn_eps=False, pooling="mean", joint_embedding=True, dropout=0.0):
        super().__init__()
        check_positive_ints(num_classes=num_classes, num_persons=num_persons)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.layout = get_layout(layout)
        self.in_channels, self.num_frames, self.num_persons = in_channels, num_frames, num_persons
        self.freeze_encoder = freeze_encoder
        self.strl = self.strl_class(self.layout, in_channels, embed_dim, num_layers, num_frames,
                                    num_strl_layers, learn_eps, backend, pooling, joint_embedding)
        self.dropout = nn.Dropout(dropout)  # on the pooled features, before the head
        self.head = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, num_classes))
        if freeze_encoder:
            for module in self.encoder_modules():
                module.requires_grad_(False)

    strl_class = STRL

    def encoder_modules(self):
        """The pre-trained parts: the joint embedding and each layer's encoder copy."""
        return [self.strl.embedding] + [layer.encoder for layer in self.strl.layers]

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_encoder:
            for module in self.encoder_modules():
                module.eval()
        return self

    def features(self, x):
        """[N, M, T, V, C] -> [N, D]: STRL output averaged over the present persons, frames and
        joints (a padded person changes nothing in eval mode)."""
        name = type(self).__name__
        self.strl.check_input(x, name)  # STRL checks again: cheap, and errors then name this model
        if x.shape[1] != self.num_persons:
            raise ValueError(f"{name}: x has M={x.shape[1]} persons but num_persons={self.num_persons}")
        present = present_persons(x).to(x.dtype)[:, :, None]
        return (self.strl(x).mean(dim=(2, 3)) * present).sum(dim=1) / present.sum(dim=1).clamp_min(1)

    def forward(self, x):
        """[N, M, T, V, C] -> logits [N, num_classes]."""
        return self.head(self.dropout(self.features(x)))

    @torch.no_grad()
    def from_pretrained(self, source):
        """Copies a pre-trained SkeletonMAE encoder (a model, its state_dict, or a checkpoint
        file holding one) into the embedding and every STRL layer's encoder. Returns self."""
        state = _encoder_state(source)
        self.strl.embedding.load_state_dict(_subtree(state, "encoder.embedding."))
        gin = _subtree(state, "encoder.gin.")
        for layer in self.strl.layers:
            layer.encoder.load_state_dict(gin)
        return self


def _encoder_state(source):
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, (str, os.PathLike)):
        source = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise ValueError(f"from_pretrained: source must be a SkeletonMAE, its state_dict or the path of a "
                         f"checkpoint file holding one, got {type(source).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(source.get(key), dict):
            return source[key]
    return source


def _subtree(state, prefix):
    sub = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not sub:
        raise ValueError(f"pre-trained weights have no '{prefix}*' entries: not a SkeletonMAE state_dict")
    return sub
