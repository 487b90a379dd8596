// The argument checks of every C++ op, CPU and CUDA alike: the one place for them in C++. The
// Python wrappers (skelmae_ext/ops/<op>.py) give the user-facing errors; these guard direct
// torch.ops calls.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace skelmae {

inline void check_masked_graph_conv_args(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                  const at::Tensor& token, const at::Tensor& adjacency,
                                  const at::Tensor& eps) {
  TORCH_CHECK(x.dim() == 3, "masked_graph_conv: x must be [G, V, C], got shape ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), "masked_graph_conv: x must be floating point, got ",
              x.scalar_type());
  const int64_t graphs = x.size(0), joints = x.size(1), channels = x.size(2);
  TORCH_CHECK(adjacency.dim() == 2 && adjacency.size(0) == joints && adjacency.size(1) == joints,
              "masked_graph_conv: adjacency must be [", joints, ", ", joints, "], got shape ",
              adjacency.sizes());
  TORCH_CHECK(token.dim() == 1 && token.size(0) == channels,
              "masked_graph_conv: token must be [", channels, "], got shape ", token.sizes());
  TORCH_CHECK(token.scalar_type() == x.scalar_type(), "masked_graph_conv: token dtype ",
              token.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(eps.numel() == 1 && eps.is_floating_point(),
              "masked_graph_conv: eps must be a floating-point scalar tensor, got shape ",
              eps.sizes(), " and dtype ", eps.scalar_type());
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, "masked_graph_conv: mask must be bool, got ",
                mask->scalar_type());
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == graphs && mask->size(1) == joints,
                "masked_graph_conv: mask must be [", graphs, ", ", joints, "], got shape ",
                mask->sizes());
  }
}

inline void check_cosine_reconstruction_loss_args(const at::Tensor& pred, const at::Tensor& target,
                                   const std::optional<at::Tensor>& mask, double beta) {
  TORCH_CHECK(pred.dim() == 2, "cosine_reconstruction_loss: pred must be [R, C], got shape ",
              pred.sizes());
  TORCH_CHECK(pred.is_floating_point(),
              "cosine_reconstruction_loss: pred must be floating point, got ", pred.scalar_type());
  TORCH_CHECK(target.sizes() == pred.sizes() && target.scalar_type() == pred.scalar_type(),
              "cosine_reconstruction_loss: target must match pred (", pred.sizes(), ", ",
              pred.scalar_type(), "), got ", target.sizes(), ", ", target.scalar_type());
  TORCH_CHECK(beta > 0, "cosine_reconstruction_loss: beta must be > 0, got ", beta);
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 1 &&
                    mask->size(0) == pred.size(0),
                "cosine_reconstruction_loss: mask must be bool [", pred.size(0), "], got ",
                mask->scalar_type(), " ", mask->sizes());
  }
}

// Checks a saved gradient [R, C] of the loss and grad_output (0-d, or [R] for reduction "none");
// returns whether grad_output has one value per row.
inline bool check_cosine_reconstruction_loss_backward_args(const at::Tensor& grad_output, const at::Tensor& gradient) {
  TORCH_CHECK(gradient.dim() == 2, "cosine_reconstruction_loss_backward: saved gradient must be 2-D");
  const bool per_row = grad_output.dim() == 1;
  TORCH_CHECK(grad_output.numel() == (per_row ? gradient.size(0) : 1),
              "cosine_reconstruction_loss_backward: grad_output must be 0-d or [", gradient.size(0),
              "], got ", grad_output.sizes());
  return per_row;
}

// The CUDA kernels read every tensor argument on one device (the dispatcher only guarantees
// that one of them is a CUDA tensor).
inline void check_device(const char* op, const char* name, const at::Tensor& tensor,
                         const at::Device& device) {
  TORCH_CHECK(tensor.device() == device, op, ": ", name, " must be on ", device, ", got ",
              tensor.device());
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& tensor, const char* like_name,
                             const at::Tensor& like) {
  TORCH_CHECK(tensor.sizes() == like.sizes(), op, ": ", name, " must have ", like_name, "'s shape ", like.sizes(),
              ", got ", tensor.sizes());
}

inline void check_linear_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() >= 1, "linear: x must be [..., in], got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(-1), "linear: weight must be [out, ", x.size(-1),
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

inline void check_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight) {
  std::vector<int64_t> expected(x.sizes().begin(), x.sizes().end());
  expected.back() = weight.size(0);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), "linear_backward: grad_output must be ", expected,
              ", got shape ", grad_output.sizes());
}

inline void check_batch_norm_prelu_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                        const at::Tensor& prelu_weight) {
  TORCH_CHECK(x.dim() == 2 || x.dim() == 4, "batch_norm_prelu: x must be [R, C] or [B, C, H, W], got shape ",
              x.sizes());
  TORCH_CHECK(x.is_floating_point(), "batch_norm_prelu: x must be floating point, got ", x.scalar_type());
  const int64_t channels = x.size(1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == channels && bias.dim() == 1 && bias.size(0) == channels,
              "batch_norm_prelu: weight and bias must be [", channels, "], got ", weight.sizes(), " and ",
              bias.sizes());
  TORCH_CHECK(prelu_weight.dim() == 1 && (prelu_weight.size(0) == 1 || prelu_weight.size(0) == channels),
              "batch_norm_prelu: prelu_weight must be [1] or [", channels, "], got ", prelu_weight.sizes());
}

inline void check_batch_norm_prelu_statistics(const std::optional<at::Tensor>& mean,
                                              const std::optional<at::Tensor>& var) {
  TORCH_CHECK(mean.has_value() == var.has_value(), "batch_norm_prelu: pass both running mean and variance, or neither");
}

enum class Reduction { kNone, kMean, kSum };

inline Reduction parse_reduction(c10::string_view reduction) {
  if (reduction == "none") return Reduction::kNone;
  if (reduction == "mean") return Reduction::kMean;
  TORCH_CHECK(reduction == "sum",
              "cosine_reconstruction_loss: reduction must be 'mean', 'sum' or 'none', got '",
              std::string(reduction), "'");
  return Reduction::kSum;
}

}  // namespace skelmae
