"""skelmae_ext's ops, one module per op (its input checks, public wrapper, fake kernels,
autograd and Triton registration), for the schemas declared in csrc/ops.cpp; backend choice in
``backends``.

Backends (the ``backend=`` argument of every op):

- ``"auto"``: the first of ``available_backends(device)``: on CPU tensors the compiled CPU
  kernels, else the reference path; on a GPU the CUDA C++ kernels where they are built, else
  the Triton kernels, else the reference path. (CUDA C++ before Triton is a default, not a
  measurement: no GPU benchmark of the two exists yet.)
- ``"cpu"``, ``"cuda"``: the compiled C++ / CUDA C++ kernels (torch.ops.skelmae_ext.*).
- ``"triton"``: the Triton kernels (skelmae_ext.triton, registered as
  torch.ops.skelmae_ext.*_triton). They run on CUDA tensors, and on CPU tensors only in
  Triton's interpreter (TRITON_INTERPRET=1 before skelmae_ext is imported), for testing.
- ``"reference"``: plain PyTorch (the ``skelmae_reference`` package), differentiated by autograd.

An unavailable backend raises a RuntimeError saying why. Each op's name here is the function
(``skelmae_ext.ops.linear``), which hides its module of the same name: import that one as
``importlib.import_module("skelmae_ext.ops.linear")``.
"""

from .backends import (BACKENDS, EXTENSION, TRITON, available_backends, cpu_cache_bytes, empty_cpu_cache,
                       resolve_backend)
from .batch_norm_prelu import batch_norm_prelu
from .cosine_reconstruction_loss import cosine_reconstruction_loss
from .fold_weights import fold_weights
from .linear import linear
from .masked_graph_conv import masked_graph_conv

__all__ = ["BACKENDS", "EXTENSION", "TRITON", "available_backends", "batch_norm_prelu", "cosine_reconstruction_loss",
           "cpu_cache_bytes", "empty_cpu_cache", "fold_weights", "linear", "masked_graph_conv", "resolve_backend"]
