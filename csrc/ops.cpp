// Operator schemas of skelmae_ext. Implementations register per dispatch key in csrc/cpu/ and
// csrc/cuda/; fake kernels and autograd are registered in skelmae_ext/ops.py.
#include <Python.h>
#include <torch/library.h>

// An empty module: importing skelmae_ext._C runs the static TORCH_LIBRARY registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(skelmae_ext, m) {
  // y = (1 + eps) * x~ + A x~ per graph, x~ = x with masked joints replaced by token.
  m.def("masked_graph_conv(Tensor x, Tensor? mask, Tensor token, Tensor adjacency, Tensor eps) -> Tensor");
  // (grad_x, grad_token, grad_eps); an output not asked for in output_mask is an empty tensor.
  m.def(
      "masked_graph_conv_backward(Tensor grad_output, Tensor x, Tensor? mask, Tensor token, "
      "Tensor adjacency, Tensor eps, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // (loss, grad_pred, grad_target): the gradients are those of the loss for grad_output = 1,
  // computed in the same pass; an output not asked for in output_mask is an empty tensor.
  m.def(
      "cosine_reconstruction_loss(Tensor pred, Tensor target, Tensor? mask, float beta, "
      "str reduction, bool[2] output_mask) -> (Tensor, Tensor, Tensor)");
  // (grad_pred, grad_target): the forward's gradients scaled by grad_output (0-d for "mean" and
  // "sum", one value per row for "none"); empty where output_mask is false.
  m.def(
      "cosine_reconstruction_loss_backward(Tensor grad_output, Tensor grad_pred, "
      "Tensor grad_target, bool[2] output_mask) -> (Tensor, Tensor)");
}
