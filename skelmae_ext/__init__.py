"""skelmae_ext: fused CPU / CUDA / Triton kernels for SkeletonMAE (ICCV 2023).

Importing never fails because of the compiled kernels: without them (or with a torch other than
the one they were built against) a warning is given once and the ops use the reference path.
"""

from . import layouts, ops
from .layouts import Layout, get_layout
from .models import STRL, SkeletonMAE, SSLClassifier, TrunkMAE
from .ops import EXTENSION, available_backends, cosine_reconstruction_loss, masked_graph_conv

__version__ = "0.1.0"

__all__ = [
    "EXTENSION",
    "Layout",
    "SSLClassifier",
    "STRL",
    "SkeletonMAE",
    "TrunkMAE",
    "get_layout",
    "layouts",
    "available_backends",
    "cosine_reconstruction_loss",
    "masked_graph_conv",
    "ops",
]
