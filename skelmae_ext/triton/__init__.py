"""Triton kernels of skelmae_ext's ops, one module per op family. skelmae_ext.ops imports this
package only where Triton can run (a CUDA GPU, or TRITON_INTERPRET=1) and registers the launch
functions below as torch.library.triton_op ops."""

import triton

from .cosine_loss import cosine_loss_backward, cosine_loss_forward
from .graph_conv import graph_conv_backward, graph_conv_forward

# Whether @triton.jit made the kernels above interpreted (TRITON_INTERPRET=1 when they were
# defined): they then run on CPU tensors, slowly, for testing.
INTERPRETED = bool(triton.knobs.runtime.interpret)

__all__ = ["cosine_loss_backward", "cosine_loss_forward", "graph_conv_backward", "graph_conv_forward"]
