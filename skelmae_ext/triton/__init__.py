"""Triton kernels of skelmae_ext's ops, one module per op. skelmae_ext.ops imports this package
only where Triton can run (a CUDA GPU, or TRITON_INTERPRET=1), and each op's module there
registers its launch functions below as torch.library.triton_op ops."""

import triton

from .cosine_reconstruction_loss import cosine_reconstruction_loss_backward, cosine_reconstruction_loss_forward
from .masked_graph_conv import masked_graph_conv_backward, masked_graph_conv_forward

# Whether @triton.jit made the kernels above interpreted (TRITON_INTERPRET=1 when they were
# defined): they then run on CPU tensors, slowly, for testing.
INTERPRETED = bool(triton.knobs.runtime.interpret)

__all__ = ["cosine_reconstruction_loss_backward", "cosine_reconstruction_loss_forward", "masked_graph_conv_backward",
           "masked_graph_conv_forward"]
