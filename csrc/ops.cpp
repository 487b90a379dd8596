// Operator schemas of skelmae_ext. Implementations register per dispatch key in csrc/cpu/ and
// csrc/cuda/; fake kernels and autograd in skelmae_ext/ops/<op>.py.
#include <Python.h>
#include <torch/library.h>

#include "cpu/cpu_isa.h"
#include "common/output_buffers.h"

// Importing skelmae_ext._C runs the static TORCH_LIBRARY registrations below; the module's own
// functions manage the CPU kernels' output cache (common/output_buffers.h) and set what
// skelmae_ext/_extension.py reads from the environment (the C++ reads none of it).
namespace {

PyObject* cpu_cache_bytes(PyObject*, PyObject*) { return PyLong_FromSize_t(skelmae::cached_output_bytes()); }

PyObject* empty_cpu_cache(PyObject*, PyObject*) {
  skelmae::release_cached_outputs();
  Py_RETURN_NONE;
}

PyObject* set_cpu_cache_limit(PyObject*, PyObject* bytes) {
  const size_t limit = PyLong_AsSize_t(bytes);
  if (limit == static_cast<size_t>(-1) && PyErr_Occurred()) return nullptr;
  skelmae::set_cached_output_limit(limit);
  Py_RETURN_NONE;
}

PyObject* set_cpu_baseline(PyObject*, PyObject* baseline) {
  const int requested = PyObject_IsTrue(baseline);
  if (requested < 0) return nullptr;
  skelmae::cpu_baseline_requested().store(requested != 0);
  Py_RETURN_NONE;
}

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(skelmae::cpu_uses_avx2() ? "avx2" : "baseline");
}

PyMethodDef methods[] = {
    {"cpu_cache_bytes", cpu_cache_bytes, METH_NOARGS, "Bytes of idle buffers in the CPU output cache."},
    {"empty_cpu_cache", empty_cpu_cache, METH_NOARGS, "Frees the idle buffers of the CPU output cache."},
    {"set_cpu_cache_limit", set_cpu_cache_limit, METH_O, "Sets the most bytes of idle buffers the cache keeps."},
    {"set_cpu_baseline", set_cpu_baseline, METH_O, "True: the CPU loops run their baseline (SSE2) copies."},
    {"cpu_isa", cpu_isa, METH_NOARGS, "The copies the CPU loops run: 'avx2' (AVX2 + FMA) or 'baseline'."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// PyMODINIT_FUNC: extern "C" with default visibility, the one symbol that stays exported.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
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
  // (grad_pred, grad_target): grad_output times the loss's gradients, computed from the inputs
  // (for a forward that ran with output_mask all false); empty where output_mask is false.
  m.def(
      "cosine_reconstruction_loss_grad(Tensor grad_output, Tensor pred, Tensor target, Tensor? mask, "
      "float beta, str reduction, bool[2] output_mask) -> (Tensor, Tensor)");
  // outer @ inner (+ outer with plus_identity) in float64, in outer's dtype: two Linear weights
  // folded into one (common/fold_weights.cpp, every device).
  m.def("fold_weights(Tensor outer, Tensor inner, bool plus_identity) -> Tensor");
  // (grad_outer, grad_inner); empty where output_mask is false.
  m.def(
      "fold_weights_backward(Tensor grad_output, Tensor outer, Tensor inner, bool plus_identity, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
  // y = x W^T + b over the last dim of x [..., in] (F.linear), on oneDNN or MKL (cpu/linear_cpu.cpp).
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // (grad_x, grad_weight, grad_bias); empty where output_mask is false.
  m.def("linear_backward(Tensor grad_output, Tensor x, Tensor weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // (y, mean, var): BatchNorm over the rows of x [R, C] (or of a [B, C, H, W] in its
  // channels-last layout; y is then channels-last) then PReLU. With mean and var given
  // (running statistics) they are used and returned; without, the batch mean and biased
  // variance are computed and returned (in float32, float64 for float64 x).
  m.def(
      "batch_norm_prelu(Tensor x, Tensor weight, Tensor bias, Tensor prelu_weight, Tensor? mean, "
      "Tensor? var, float eps) -> (Tensor, Tensor, Tensor)");
  // (grad_x, grad_weight, grad_bias, grad_prelu_weight); batch_stats: mean and var are x's own,
  // so grad_x includes their dependence on x. Empty where output_mask is false.
  m.def(
      "batch_norm_prelu_backward(Tensor grad_output, Tensor x, Tensor weight, Tensor bias, "
      "Tensor prelu_weight, Tensor mean, Tensor var, float eps, bool batch_stats, bool[4] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // The running statistics' update after a training-mode batch_norm_prelu, as F.batch_norm's:
  // lerp towards mean and the unbiased var (of count values) by momentum; num_batches_tracked + 1.
  m.def(
      "batch_norm_update_stats(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor(c!) num_batches_tracked, "
      "Tensor mean, Tensor var, float momentum, int count) -> ()");
}
