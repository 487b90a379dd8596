"""Reference PyTorch implementation of SkeletonMAE: its two ops, its models and its layouts.

Plain, readable PyTorch written next to the paper and docs/design.md (sections 4 to 6). It imports nothing from
skelmae_ext: it is the oracle of skelmae_ext's tests and the baseline of its benchmarks, and
skelmae_ext's models are its drop-in, faster twins.
"""

from .layouts import BUILTIN_LAYOUTS, PART_NAMES, Layout, get_layout, layout_from_dict
from .models import GINEncoder, GINLayer, SkeletonEncoder, SkeletonMAE, SkeletonMAEOutput
from .ops import Ops, ReferenceOps, batch_norm_prelu, cosine_reconstruction_loss, linear, masked_graph_conv
from .strl import STRL, SSLClassifier
from .trunk import TrunkMAE, TrunkMAEOutput

__all__ = [
    "BUILTIN_LAYOUTS", "PART_NAMES", "Layout", "get_layout", "layout_from_dict",
    "GINEncoder", "GINLayer", "SkeletonEncoder", "SkeletonMAE", "SkeletonMAEOutput",
    "Ops", "ReferenceOps", "batch_norm_prelu", "cosine_reconstruction_loss", "linear", "masked_graph_conv", "STRL",
    "SSLClassifier", "TrunkMAE", "TrunkMAEOutput",
]
