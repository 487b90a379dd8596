"""STRL and the SSL classifier in plain PyTorch (docs/design.md section 6, paper section 3.2).

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
from .models import GINEncoder, check_positive_ints, check_skeleton_input, shared_dropout
from .ops import ReferenceOps


class TemporalBranch(nn.Sequential):
    """One branch of CTR-GCN's multi-scale temporal module on [B, D, T, V]: a 1x1 convolution
    to ``width`` channels and BatchNorm, then, but for the 1x1 branch, ReLU, a temporal
    convolution (``kernel_size`` with ``dilation``) or a max-pool over 3 frames (``pool``), and
    BatchNorm. An nn.Sequential, as CTR-GCN's (its state_dict keys are the positions 0 to 4),
    with its parts named."""

    def __init__(self, dim, width, kernel_size=None, dilation=1, pool=False):
        layers = [nn.Conv2d(dim, width, 1), nn.BatchNorm2d(width)]
        if kernel_size is not None:
            padding = ((kernel_size - 1) * dilation // 2, 0)
            layers += [nn.ReLU(), nn.Conv2d(width, width, (kernel_size, 1), padding=padding, dilation=(dilation, 1)),
                       nn.BatchNorm2d(width)]
        elif pool:
            layers += [nn.ReLU(), nn.MaxPool2d((3, 1), stride=1, padding=(1, 0)), nn.BatchNorm2d(width)]
        super().__init__(*layers)

    opener = property(lambda self: self[0])
    opener_norm = property(lambda self: self[1])
    activation = property(lambda self: self[2] if len(self) > 2 else None)
    temporal = property(lambda self: self[3] if len(self) > 2 else None)
    norm = property(lambda self: self[4] if len(self) > 2 else None)


class MultiScaleTemporalConv(nn.Module):
    """CTR-GCN's multi-scale temporal module on [B, D, T, V]: kernel 5 with each dilation, a
    max-pool and a 1x1 branch side by side, plus a residual and ReLU. Each BatchNorm, with the
    ReLU after it, runs through ``ops.batch_norm_prelu``."""

    def __init__(self, dim, kernel_size=5, dilations=(1, 2), ops=None):
        super().__init__()
        self.ops = ReferenceOps() if ops is None else ops
        branches = len(dilations) + 2
        if dim % branches:
            raise ValueError(f"embed_dim must be divisible by {branches} (temporal branches), got {dim}")
        width = dim // branches
        self.branches = nn.ModuleList(
            [TemporalBranch(dim, width, kernel_size, dilation) for dilation in dilations]
            + [TemporalBranch(dim, width, pool=True), TemporalBranch(dim, width)]
        )

    def forward(self, x):
        return torch.relu(torch.cat([self.branch(branch, branch.opener(x)) for branch in self.branches], dim=1) + x)

    def branch(self, branch, opened):
        """A branch's output from its 1x1 convolution's: BatchNorm (and ReLU), then the temporal
        convolution or max-pool and BatchNorm."""
        h = self.ops.batch_norm_prelu(opened, branch.opener_norm, branch.activation)
        if branch.temporal is None:
            return h
        return self.ops.batch_norm_prelu(branch.temporal(h), branch.norm)


POOLINGS = ("mean", "sum")


def present_persons(x):
    """[N, M, T, V, C] -> [N, M] bool: the persons that are not all-zero padding."""
    return x.flatten(2).ne(0).any(-1)


def pooled(h, x):
    """STRL output h [N, M, T, V, D] of x -> [N, D]: averaged over the present persons, frames
    and joints (a padded person changes nothing in eval mode)."""
    present = present_persons(x).to(h.dtype)[:, :, None]
    return (h.mean(dim=(2, 3)) * present).sum(dim=1) / present.sum(dim=1).clamp_min(1)


class STRLLayer(nn.Module):
    """Spatial modelling, update and multi-scale temporal convolution (Eq. 3 and 4)."""

    def __init__(self, dim, num_layers, adjacency, ops=None, learn_eps=False, pooling="mean"):
        super().__init__()
        self.ops = ReferenceOps() if ops is None else ops
        self.pooling = pooling
        self.encoder = GINEncoder(dim, num_layers, adjacency, self.ops, learn_eps)  # a copy of G_E
        self.residual = nn.Linear(dim, dim)  # the 1x1 convolution around spatial modelling
        self.update = nn.Linear(dim, dim)  # W of Eq. 4
        self.temporal = MultiScaleTemporalConv(dim, ops=self.ops)

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
    statistics, as in SkeletonMAE (its docstring says why). ``ops``: the implementation of the
    hot spots (an ops.Ops); None: this package's plain PyTorch."""

    def __init__(self, layout="coco", in_channels=2, embed_dim=64, num_layers=3, num_frames=64,
                 num_strl_layers=3, learn_eps=False, pooling="mean", joint_embedding=True, ops=None):
        super().__init__()
        check_positive_ints(in_channels=in_channels, embed_dim=embed_dim, num_layers=num_layers,
                            num_frames=num_frames, num_strl_layers=num_strl_layers)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.layout, self.in_channels, self.num_frames = get_layout(layout), in_channels, num_frames
        adjacency = self.layout.adjacency()
        self.ops = ops = ReferenceOps() if ops is None else ops
        self.embedding = nn.Linear(in_channels, embed_dim)
        self.position = nn.Parameter(torch.zeros(num_frames, embed_dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        # Which joint a feature belongs to: without it mirror-symmetric joints (left and right
        # wrist) look alike to the GIN copies (docs/study.md measures what it is worth).
        self.joint_position = None
        if joint_embedding:
            self.joint_position = nn.Parameter(torch.zeros(self.layout.num_joints, embed_dim))
            nn.init.trunc_normal_(self.joint_position, std=0.02)
        self.layers = nn.ModuleList(
            [STRLLayer(embed_dim, num_layers, adjacency, ops, learn_eps, pooling)
             for _ in range(num_strl_layers)]
        )

    def check_input(self, x, owner="STRL"):
        """The checks of check_skeleton_input, and T = num_frames (the position embedding's)."""
        check_skeleton_input(x, self.layout, self.in_channels, owner, self.position.dtype)
        if x.shape[2] != self.num_frames:
            raise ValueError(f"{owner}: x has T={x.shape[2]} frames but num_frames={self.num_frames}")

    def forward(self, x, mask=None, token=None):
        """x: [N, M, T, V, C] -> [N, M, T, V, D]. With a mask [N, M, T, V] (bool), the masked
        joints' embeddings are the token [D] (trunk pre-training: see trunk.TrunkMAE), before the
        position embeddings are added."""
        self.check_input(x)
        persons = present_persons(x)
        position = self.position[:, None, :]
        if self.joint_position is not None:
            position = position + self.joint_position
        h = self.ops.linear(x, self.embedding.weight, self.embedding.bias)
        if mask is not None:
            h = torch.where(mask[..., None], token.to(h.dtype), h)
        h = (h + position) * persons[:, :, None, None, None]
        for layer in self.layers:
            h = layer(h, persons)
        return h


class SSLClassifier(nn.Module):
    """STRL plus a classifier head, fine-tuned from a pre-trained SkeletonMAE encoder.

    ``freeze_encoder=True`` is the linear-probe protocol: the embedding and every encoder copy
    keep their pre-trained weights; their BatchNorm statistics follow the mode and are
    re-estimated in training, because running statistics from elsewhere (a random encoder's, or
    the pre-training's beyond the first layer) do not normalise what the copies see.
    ``pooling="mean"`` and ``joint_embedding=True`` are what make it learn (see STRL); ``pooling="sum",
    joint_embedding=False`` is the paper's model as written. ``dropout`` drops pooled features
    before the head in training, its mask drawn for the model's ``batch_share`` of a global
    batch (see models.shared_rand). ``ops``: the implementation of the hot spots (an ops.Ops);
    None: this package's plain PyTorch.
    """

    def __init__(self, num_classes, layout="coco", in_channels=2, embed_dim=64, num_layers=3,
                 num_frames=64, num_persons=2, freeze_encoder=False,
                 num_strl_layers=3, learn_eps=False, pooling="mean", joint_embedding=True, dropout=0.0, ops=None):
        super().__init__()
        check_positive_ints(num_classes=num_classes, num_persons=num_persons)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.layout = get_layout(layout)
        self.in_channels, self.num_frames, self.num_persons = in_channels, num_frames, num_persons
        self.freeze_encoder = freeze_encoder
        self.strl = STRL(self.layout, in_channels, embed_dim, num_layers, num_frames, num_strl_layers, learn_eps,
                         pooling, joint_embedding, ops)
        self.dropout = nn.Dropout(dropout)  # on the pooled features, before the head
        self.batch_share = (0, 1)  # see models.shared_rand
        self.head = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, num_classes))
        if freeze_encoder:
            for module in self.encoder_modules():
                module.requires_grad_(False)

    def encoder_modules(self):
        """The pre-trained parts: the joint embedding and each layer's encoder copy."""
        return [self.strl.embedding] + [layer.encoder for layer in self.strl.layers]

    def features(self, x):
        """[N, M, T, V, C] -> [N, D]: STRL output averaged over the present persons, frames and
        joints (a padded person changes nothing in eval mode)."""
        name = type(self).__name__
        self.strl.check_input(x, name)  # STRL checks again: cheap, and errors then name this model
        if x.shape[1] != self.num_persons:
            raise ValueError(f"{name}: x has M={x.shape[1]} persons but num_persons={self.num_persons}")
        return pooled(self.strl(x), x)

    def forward(self, x):
        """[N, M, T, V, C] -> logits [N, num_classes]."""
        return self.head(shared_dropout(self.features(x), self.dropout, self.batch_share))

    def from_pretrained(self, source):
        """load_pretrained(source), returning self."""
        self.load_pretrained(source)
        return self

    @torch.no_grad()
    def load_pretrained(self, source):
        """Copies pre-trained weights (a model, its state_dict, or a checkpoint file holding one)
        into the classifier; the head always starts random. From a TrunkMAE: every trunk weight
        (``strl.*``: embeddings, every STRL layer). From a SkeletonMAE: its encoder, into the
        joint embedding and every STRL layer's encoder copy. A source pre-trained on another
        layout (a model's, or a checkpoint's that records it) is refused: its weights would load,
        and mean other joints. Returns (loaded, random): the names of the state_dict entries that
        took pre-trained values and of those that did not."""
        if isinstance(source, (str, os.PathLike)):
            source = torch.load(source, map_location="cpu", weights_only=True)
        layout = source.get("layout") if isinstance(source, dict) else getattr(source, "layout", None)
        layout = None if layout is None else get_layout(layout)
        if layout is not None and layout.to_dict() != self.layout.to_dict():
            raise ValueError(f"from_pretrained: the encoder was pre-trained on layout {layout.name!r} "
                             f"({layout.num_joints} joints), this classifier is built for {self.layout.name!r} "
                             f"({self.layout.num_joints} joints): build it with the pre-training's layout")
        state = _encoder_state(source)
        if any(key.startswith("strl.") for key in state):
            trunk = _subtree(state, "strl.")
            own = self.strl.state_dict()
            misfits = [f"strl.{key} {tuple(value.shape)} (here {tuple(own[key].shape) if key in own else 'absent'})"
                       for key, value in trunk.items() if key not in own or own[key].shape != value.shape]
            if misfits:
                raise ValueError(f"the pre-trained trunk does not fit this classifier (build it with the "
                                 f"pre-training's arguments): {', '.join(misfits[:4])}")
            self.strl.load_state_dict(trunk, strict=False)
            loaded = {f"strl.{key}" for key in trunk}
        else:
            self.strl.embedding.load_state_dict(_subtree(state, "encoder.embedding."))
            gin = _subtree(state, "encoder.gin.")
            for layer in self.strl.layers:
                layer.encoder.load_state_dict(gin)
            loaded = {f"strl.embedding.{key}" for key in self.strl.embedding.state_dict()} | {
                f"strl.layers.{i}.encoder.{key}" for i in range(len(self.strl.layers)) for key in gin}
        names = list(self.state_dict())
        return [name for name in names if name in loaded], [name for name in names if name not in loaded]


def _encoder_state(source):
    """The state_dict of a model, of a checkpoint (its "state_dict" or "model"), or itself."""
    if isinstance(source, nn.Module):
        return source.state_dict()
    if not isinstance(source, dict):
        raise ValueError(f"from_pretrained: source must be a SkeletonMAE or TrunkMAE, its state_dict or the path "
                         f"of a checkpoint file holding one, got {type(source).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(source.get(key), dict):
            return source[key]
    return source


def _subtree(state, prefix):
    sub = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not sub:
        raise ValueError(f"pre-trained weights have no '{prefix}*' entries: not a SkeletonMAE or TrunkMAE "
                         "state_dict")
    return sub
