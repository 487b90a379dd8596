// CPU kernels of skelmae_ext::linear and its backward: F.linear, its products by the faster of
// the two engines ATen bundles (benchmarks/README.md measures both).
//
//   y  = x W^T + b          x [..., in] as rows [R, in], W [out, in], b [out]
//   dx = dy W,   dW = (x^T dy)^T,   db = sum_r dy
//
// y and dx: oneDNN's inner product (ATen's mkldnn::_linear_pointwise) for float32 outputs of up
// to 32 MiB, where this torch has it and torch.backends.mkldnn.enabled: faster than MKL's sgemm
// at the models' shapes. Otherwise ATen's addmm / mm (MKL) into the output cache
// (output_buffers.h): PyTorch's own larger outputs are fresh pages every time, whose faults cost
// more than the product.
// dW: MKL, as the [in, out] product x^T dy, then transposed: the faster orientation for few input
// features (a joint's 2 or 3 coordinates).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <vector>

#include "../common/checks.h"
#include "../common/output_buffers.h"

namespace skelmae {
namespace {

// Outputs above this come from glibc as fresh mappings every time (its largest heap block by
// default), and their page faults cost more than oneDNN saves.
constexpr int64_t kOneDnnMaxOutputBytes = int64_t(32) << 20;

// oneDNN's inner product, where it serves x [R, in] -> [R, out]: float32, an output of at most
// kOneDnnMaxOutputBytes, and a torch that has it and enables it.
std::optional<c10::OperatorHandle> onednn_linear_op(const at::Tensor& x, int64_t out_features) {
  static const std::optional<c10::OperatorHandle> handle =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  const int64_t output_bytes = x.size(0) * out_features * static_cast<int64_t>(sizeof(float));
  if (!handle.has_value() || x.scalar_type() != at::kFloat || x.numel() == 0 ||
      output_bytes > kOneDnnMaxOutputBytes || !at::globalContext().userEnabledMkldnn()) {
    return std::nullopt;
  }
  return handle;
}

// x W^T + b: oneDNN's (a new tensor), or ATen's addmm / mm into a cached output.
at::Tensor product(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (const auto onednn = onednn_linear_op(x, weight.size(0))) {
    torch::jit::Stack stack{x.contiguous(), weight.contiguous(), bias.has_value() ? c10::IValue(*bias) : c10::IValue(),
                            c10::IValue("none"), c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue()};
    onednn->callBoxed(&stack);
    return stack[0].toTensor();
  }
  at::Tensor out = new_output({x.size(0), weight.size(0)}, x.options());
  if (bias.has_value()) return at::addmm_out(out, *bias, x, weight.t());
  return at::mm_out(out, x, weight.t());
}

// t [..., n] as rows [R, n] (a view where its layout allows); also for n = 0, unlike reshape(-1, n).
at::Tensor as_rows(const at::Tensor& t) {
  return t.reshape({c10::multiply_integers(t.sizes().slice(0, t.dim() - 1)), t.size(-1)});
}

// rows [R, n] back to `leading` [...] + [n].
at::Tensor from_rows(const at::Tensor& rows, at::IntArrayRef leading) {
  std::vector<int64_t> sizes(leading.begin(), leading.end());
  sizes.push_back(rows.size(1));
  return rows.view(sizes);
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear_args(x, weight, bias);
  return from_rows(product(as_rows(x), weight, bias), x.sizes().slice(0, x.dim() - 1));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                                                   const at::Tensor& weight,
                                                                   std::array<bool, 3> output_mask) {
  check_linear_backward_args(grad_y_in, x_in, weight);
  const at::Tensor grad_y = as_rows(grad_y_in), x = as_rows(x_in);
  at::Tensor grad_x = output_mask[0] ? product(grad_y, weight.t(), std::nullopt).view(x_in.sizes()) : x.new_empty({0});
  at::Tensor grad_weight = output_mask[1] ? x.t().mm(grad_y).t().contiguous() : weight.new_empty({0});
  at::Tensor grad_bias = output_mask[2] ? grad_y.sum(0) : weight.new_empty({0});
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

}  // namespace skelmae
