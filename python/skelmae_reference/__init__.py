"""Reference PyTorch implementation of SkeletonMAE's ops (and, later, its models).

Plain, readable PyTorch written next to DESIGN.md section 4. It imports nothing from
skelmae_ext: it is the oracle of skelmae_ext's tests and the baseline of its benchmarks.
"""

from .ops import cosine_reconstruction_loss, masked_graph_conv

__all__ = ["cosine_reconstruction_loss", "masked_graph_conv"]
