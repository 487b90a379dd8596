// CPU kernels of skelmae_ext::linear and its backward: F.linear with the large outputs (y and
// dx) taken from the output cache (output_buffers.h). The products are ATen's (MKL); what this
// adds is memory that is already resident: PyTorch's own [rows, features] outputs are often
// fresh pages, and faulting them in cost about as much as the product (a pre-training step
// faulted in about 50 MB of them, 10-20 ms).
//
//   y  = x W^T + b          x [R, in], W [out, in], b [out]
//   dx = dy W,   dW = (x^T dy)^T,   db = sum_r dy
//
// dW is computed as the [in, out] product x^T dy, then transposed: for few input features (a
// joint's 2 or 3 coordinates) MKL ran that orientation about 5x faster than dy^T x.
#include <torch/library.h>

#include <array>
#include <optional>

#include "output_buffers.h"

namespace skelmae {
namespace {

void check_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "linear: x must be [R, in], got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1), "linear: weight must be [out, ", x.size(1),
              "], got shape ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "linear: weight dtype ", weight.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "linear: bias must be [",
                weight.size(0), "], got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "linear: bias dtype ", bias->scalar_type(),
                " differs from x dtype ", x.scalar_type());
  }
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_args(x, weight, bias);
  at::Tensor y = new_output({x.size(0), weight.size(0)}, x.options());
  if (bias.has_value()) return at::addmm_out(y, *bias, x, weight.t());
  return at::mm_out(y, x, weight.t());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                   const at::Tensor& weight,
                                                                   std::array<bool, 3> output_mask) {
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.size(0) == x.size(0) && grad_y.size(1) == weight.size(0),
              "linear_backward: grad_output must be [", x.size(0), ", ", weight.size(0), "], got shape ",
              grad_y.sizes());
  at::Tensor grad_x = x.new_empty({0});
  if (output_mask[0]) {
    grad_x = new_output(x.sizes(), x.options());
    at::mm_out(grad_x, grad_y, weight);
  }
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
