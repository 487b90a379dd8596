// CPU kernel of skelmae_ext::cosine_reconstruction_loss: loss and, for the inputs that need
// it, the gradient of the loss (for grad_output = 1) in one pass over the rows.
//
//   l_r  = max(1 - <p_r, t_r> / (max(|p_r|, 1e-12) * max(|t_r|, 1e-12)), 0) ^ beta
//   mean = sum_r mask_r * l_r / max(sum_r mask_r, 1);  sum = sum_r mask_r * l_r;
//   none = mask_r * l_r
//   dl_r/dp_r = g * (t / (np * nt) - [|p| >= eps] * c * p / np^2),  g = -beta (1 - c)^(beta - 1)
//   (and symmetrically for t_r), scaled by the row weight of the reduction.
//
// The per-row arithmetic is in common/cosine_loss_math.h (shared with CUDA). Rows run in
// parallel; the loss sum is reduced over fixed chunks of rows, then the chunks in order.
// Gradients go to fresh buffers; the autograd formula multiplies them by grad_output.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "../common/checks.h"
#include "../common/cosine_loss_math.h"
#include "channel_tiles.h"
#include "output_buffers.h"

namespace skelmae {
namespace {

constexpr int64_t kRowsPerChunk = 512;

// Loss of one row; writes weight * gradient where the output pointers are not null.
template <typename T, typename Acc>
Acc cosine_row(const T* pred, const T* target, int64_t channels, Acc beta, Acc weight,
               T* grad_pred, T* grad_target) {
  Acc dot[kCpuTile] = {}, pred_sq[kCpuTile] = {}, target_sq[kCpuTile] = {};
  for_each_channel_tile(channels, [&](auto width, int64_t c0) {
    accumulate_row_products_tile<decltype(width)::value>(dot, pred_sq, target_sq, pred + c0,
                                                         target + c0);
  });
  const CosineRowTerms<Acc> terms =
      cosine_row_terms(lane_sum<kCpuTile>(dot), lane_sum<kCpuTile>(pred_sq),
                       lane_sum<kCpuTile>(target_sq), beta);
  if (grad_pred != nullptr || grad_target != nullptr) {
    for_each_channel_tile(channels, [&](auto width, int64_t c0) {
      write_row_gradient_tile<decltype(width)::value>(
          grad_pred ? grad_pred + c0 : nullptr, grad_target ? grad_target + c0 : nullptr,
          pred + c0, target + c0, terms, weight);
    });
  }
  return terms.loss;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cosine_loss_cpu(
    const at::Tensor& pred_in, const at::Tensor& target_in, const std::optional<at::Tensor>& mask_in,
    double beta, c10::string_view reduction_name, std::array<bool, 2> output_mask) {
  check_cosine_loss_args(pred_in, target_in, mask_in, beta);
  const Reduction reduction = parse_reduction(reduction_name);
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const std::optional<at::Tensor> mask =
      mask_in.has_value() ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const int64_t rows = pred.size(0), channels = pred.size(1);
  const bool* mask_ptr = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  const int64_t counted = mask.has_value() ? mask->sum().item<int64_t>() : rows;

  at::Tensor loss = reduction == Reduction::kNone ? pred.new_empty({rows}) : pred.new_empty({});
  at::Tensor grad_pred = new_output(pred, output_mask[0]);
  at::Tensor grad_target = new_output(target, output_mask[1]);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "cosine_loss_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const Acc beta_acc = static_cast<Acc>(beta);
    const Acc row_weight = counted_row_weight<Acc>(reduction == Reduction::kMean, counted);
    const scalar_t* pred_data = pred.data_ptr<scalar_t>();
    const scalar_t* target_data = target.data_ptr<scalar_t>();
    scalar_t* loss_rows = reduction == Reduction::kNone ? loss.data_ptr<scalar_t>() : nullptr;
    scalar_t* grad_pred_data = output_mask[0] ? grad_pred.data_ptr<scalar_t>() : nullptr;
    scalar_t* grad_target_data = output_mask[1] ? grad_target.data_ptr<scalar_t>() : nullptr;
    const int64_t chunks = num_chunks(rows, kRowsPerChunk);
    std::vector<double> loss_partials(static_cast<size_t>(chunks), 0.0);  // long sums in double

    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        double partial = 0.0;
        const int64_t r_end = std::min(rows, (chunk + 1) * kRowsPerChunk);
        for (int64_t r = chunk * kRowsPerChunk; r < r_end; ++r) {
          const int64_t offset = r * channels;
          scalar_t* row_grad_pred = grad_pred_data ? grad_pred_data + offset : nullptr;
          scalar_t* row_grad_target = grad_target_data ? grad_target_data + offset : nullptr;
          // Every row is computed (sequential reads beat skipping the masked-out ones); those
          // get zero weight, so their gradient is 0 * derivative, as in the reference path.
          const bool counted_row = mask_ptr == nullptr || mask_ptr[r];
          const Acc loss_r = cosine_row(pred_data + offset, target_data + offset, channels,
                                        beta_acc, counted_row ? row_weight : Acc(0),
                                        row_grad_pred, row_grad_target);
          const Acc row_loss = counted_row ? loss_r : Acc(0);
          if (loss_rows != nullptr) loss_rows[r] = static_cast<scalar_t>(row_loss);
          partial += row_loss;
        }
        loss_partials[chunk] = partial;
      }
    });

    if (reduction != Reduction::kNone) {
      double total = 0.0;
      for (const double partial : loss_partials) total += partial;
      loss.fill_(total * static_cast<double>(row_weight));
    }
  });
  return {loss, grad_pred, grad_target};
}

// out[r, c] = scale[r or 0] * gradient[r, c]: the chain rule through the loss, reading
// grad_output in place (no host round trip is needed on the CPU either).
at::Tensor scale_rows(const at::Tensor& grad_output, const at::Tensor& gradient_in, bool needed) {
  if (!needed) return gradient_in.new_empty({0});
  const bool per_row = check_loss_backward_args(grad_output, gradient_in);
  const at::Tensor gradient = gradient_in.contiguous();
  const int64_t rows = gradient.size(0), channels = gradient.size(1);
  const at::Tensor scale = grad_output.contiguous().to(gradient.scalar_type());
  at::Tensor out = new_output(gradient);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gradient.scalar_type(), "cosine_loss_backward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* scale_data = scale.data_ptr<scalar_t>();
    const scalar_t* in = gradient.data_ptr<scalar_t>();
    scalar_t* result = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, channels)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const Acc factor = static_cast<Acc>(scale_data[per_row ? r : 0]);
        const int64_t offset = r * channels;
        for (int64_t c = 0; c < channels; ++c) {
          result[offset + c] = static_cast<scalar_t>(factor * static_cast<Acc>(in[offset + c]));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> cosine_loss_backward_cpu(const at::Tensor& grad_output,
                                                           const at::Tensor& grad_pred,
                                                           const at::Tensor& grad_target,
                                                           std::array<bool, 2> output_mask) {
  return {scale_rows(grad_output, grad_pred, output_mask[0]),
          scale_rows(grad_output, grad_target, output_mask[1])};
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CPU, m) {
  m.impl("cosine_reconstruction_loss", &cosine_loss_cpu);
  m.impl("cosine_reconstruction_loss_backward", &cosine_loss_backward_cpu);
}

}  // namespace skelmae
