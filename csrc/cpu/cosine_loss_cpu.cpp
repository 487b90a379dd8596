// CPU kernels of skelmae_ext::cosine_reconstruction_loss (loss and, for the inputs asked for,
// the gradient of the loss for grad_output = 1, in one pass over the rows), of its backward
// (that gradient scaled by grad_output) and of cosine_reconstruction_loss_grad (the gradient
// times grad_output computed from the inputs: what the CPU autograd uses, see ops.py).
//
//   l_r  = max(1 - <p_r, t_r> / (max(|p_r|, 1e-12) * max(|t_r|, 1e-12)), 0) ^ beta
//   mean = sum_r mask_r * l_r / max(sum_r mask_r, 1);  sum = sum_r mask_r * l_r;
//   none = mask_r * l_r
//   dl_r/dp_r = g * (t / (np * nt) - [|p| >= eps] * c * p / np^2),  g = -beta (1 - c)^(beta - 1)
//   (and symmetrically for t_r), scaled by the row weight of the reduction.
//
// The per-row arithmetic is in common/cosine_loss_math.h (shared with CUDA). Rows run in
// parallel; the loss sum is reduced over fixed chunks of rows, then the chunks in order. Rows
// the mask leaves out are never read: their loss and gradient are zero.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../common/checks.h"
#include "../common/cosine_loss_math.h"
#include "channel_tiles.h"
#include "cpu_isa.h"
#include "output_buffers.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace skelmae {
namespace {

constexpr int64_t kRowsPerChunk = 512;

// Loss of one row; writes weight * gradient where the output pointers are not null.
template <typename T, typename Acc>
SKELMAE_INLINE_BODY inline Acc cosine_row(const T* pred, const T* target, int64_t channels, Acc beta, Acc weight,
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

// Skipped rows break the hardware prefetchers' streams: without help every counted row is a
// full memory latency. So the row kPrefetchRows ahead (12 KiB at C = 64 float32) is prefetched
// when the mask counts it.
constexpr int64_t kPrefetchRows = 48;

template <typename T>
void prefetch_counted_row(const T* pred, const T* target, const bool* mask, int64_t row, int64_t rows,
                          int64_t channels) {
  const int64_t ahead = row + kPrefetchRows;
  if (ahead >= rows || (mask != nullptr && !mask[ahead])) return;
  const int64_t bytes = channels * static_cast<int64_t>(sizeof(T));
  const char* p = reinterpret_cast<const char*>(pred + ahead * channels);
  const char* t = reinterpret_cast<const char*>(target + ahead * channels);
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(p + offset);
    __builtin_prefetch(t + offset);
  }
}

// The gradient op writes a whole [R, C] buffer, mostly zeros, that nothing reads before the
// next op: stores that bypass the caches (SSE streaming stores, float32 rows of whole 16-byte
// groups) skip reading each line before writing it. Other rows use plain stores.
template <typename T>
bool streamable(const T* row, int64_t channels) {
#if defined(__SSE2__)
  return std::is_same_v<T, float> && channels % 4 == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0;
#else
  return false;
#endif
}

template <typename T>
void store_row(T* destination, const T* source, int64_t channels) {
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float>) {
    if (streamable(destination, channels)) {
      for (int64_t c = 0; c < channels; c += 4) _mm_stream_ps(destination + c, source ? _mm_loadu_ps(source + c) : _mm_setzero_ps());
      return;
    }
  }
#endif
  if (source != nullptr) {
    std::copy(source, source + channels, destination);
  } else {
    std::fill(destination, destination + channels, T(0));
  }
}

// Makes this thread's streaming stores visible before the parallel region ends.
inline void finish_streaming_stores() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

template <typename T>
void zero_rows(T* grad_pred, T* grad_target, int64_t channels) {
  if (grad_pred != nullptr) std::fill(grad_pred, grad_pred + channels, T(0));
  if (grad_target != nullptr) std::fill(grad_target, grad_target + channels, T(0));
}

// The loss's inputs checked and contiguous, with the number of rows the mask counts.
struct LossInputs {
  LossInputs(const at::Tensor& pred_in, const at::Tensor& target_in, const std::optional<at::Tensor>& mask_in,
             double beta, c10::string_view reduction_name) {
    check_cosine_loss_args(pred_in, target_in, mask_in, beta);
    reduction = parse_reduction(reduction_name);
    pred = pred_in.contiguous();
    target = target_in.contiguous();
    if (mask_in.has_value()) mask = mask_in->contiguous();
    rows = pred.size(0);
    channels = pred.size(1);
    counted = mask.has_value() ? mask->sum().item<int64_t>() : rows;
  }
  const bool* mask_data() const { return mask.has_value() ? mask->data_ptr<bool>() : nullptr; }

  at::Tensor pred, target;
  std::optional<at::Tensor> mask;
  Reduction reduction;
  int64_t rows, channels, counted;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> cosine_loss_cpu(
    const at::Tensor& pred_in, const at::Tensor& target_in, const std::optional<at::Tensor>& mask_in,
    double beta, c10::string_view reduction_name, std::array<bool, 2> output_mask) {
  const LossInputs in(pred_in, target_in, mask_in, beta, reduction_name);
  const at::Tensor &pred = in.pred, &target = in.target;
  const Reduction reduction = in.reduction;
  const int64_t rows = in.rows, channels = in.channels, counted = in.counted;
  const bool* mask_ptr = in.mask_data();

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

    const auto loss_chunks = [&](int64_t chunk_begin, int64_t chunk_end) SKELMAE_INLINE_BODY {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        double partial = 0.0;
        const int64_t r_end = std::min(rows, (chunk + 1) * kRowsPerChunk);
        for (int64_t r = chunk * kRowsPerChunk; r < r_end; ++r) {
          prefetch_counted_row(pred_data, target_data, mask_ptr, r, rows, channels);
          const int64_t offset = r * channels;
          scalar_t* row_grad_pred = grad_pred_data ? grad_pred_data + offset : nullptr;
          scalar_t* row_grad_target = grad_target_data ? grad_target_data + offset : nullptr;
          if (mask_ptr != nullptr && !mask_ptr[r]) {
            zero_rows(row_grad_pred, row_grad_target, channels);
            if (loss_rows != nullptr) loss_rows[r] = scalar_t(0);
            continue;
          }
          const Acc row_loss = cosine_row(pred_data + offset, target_data + offset, channels, beta_acc,
                                          row_weight, row_grad_pred, row_grad_target);
          if (loss_rows != nullptr) loss_rows[r] = static_cast<scalar_t>(row_loss);
          partial += row_loss;
        }
        loss_partials[chunk] = partial;
      }
    };
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) { run_rows(loss_chunks, begin, end); });

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

// grad_output * d(loss)/d(pred) and / or d(loss)/d(target), from the inputs.
std::tuple<at::Tensor, at::Tensor> cosine_loss_grad_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& pred_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& mask_in, double beta, c10::string_view reduction_name,
    std::array<bool, 2> output_mask) {
  const LossInputs in(pred_in, target_in, mask_in, beta, reduction_name);
  const at::Tensor &pred = in.pred, &target = in.target;
  const Reduction reduction = in.reduction;
  const int64_t rows = in.rows, channels = in.channels, counted = in.counted;
  const bool* mask_ptr = in.mask_data();
  const bool per_row = check_loss_backward_args(grad_output_in, pred);
  const at::Tensor scale = grad_output_in.contiguous().to(pred.scalar_type());
  at::Tensor grad_pred = new_output(pred, output_mask[0]);
  at::Tensor grad_target = new_output(target, output_mask[1]);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "cosine_loss_grad_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const Acc beta_acc = static_cast<Acc>(beta);
    const Acc row_weight = counted_row_weight<Acc>(reduction == Reduction::kMean, counted);
    const scalar_t* scale_data = scale.data_ptr<scalar_t>();
    const scalar_t* pred_data = pred.data_ptr<scalar_t>();
    const scalar_t* target_data = target.data_ptr<scalar_t>();
    scalar_t* grad_pred_data = output_mask[0] ? grad_pred.data_ptr<scalar_t>() : nullptr;
    scalar_t* grad_target_data = output_mask[1] ? grad_target.data_ptr<scalar_t>() : nullptr;
    const auto gradient_rows = [&](int64_t begin, int64_t end) SKELMAE_INLINE_BODY {
      // Each row's gradients are computed here (in L1), then stored.
      std::vector<scalar_t> pred_row(grad_pred_data ? channels : 0), target_row(grad_target_data ? channels : 0);
      for (int64_t r = begin; r < end; ++r) {
        prefetch_counted_row(pred_data, target_data, mask_ptr, r, rows, channels);
        const int64_t offset = r * channels;
        const bool counted_row = mask_ptr == nullptr || mask_ptr[r];
        if (counted_row) {
          const Acc weight = row_weight * static_cast<Acc>(scale_data[per_row ? r : 0]);
          cosine_row(pred_data + offset, target_data + offset, channels, beta_acc, weight,
                     grad_pred_data ? pred_row.data() : nullptr, grad_target_data ? target_row.data() : nullptr);
        }
        if (grad_pred_data) store_row(grad_pred_data + offset, counted_row ? pred_row.data() : nullptr, channels);
        if (grad_target_data) store_row(grad_target_data + offset, counted_row ? target_row.data() : nullptr, channels);
      }
      finish_streaming_stores();
    };
    at::parallel_for(0, rows, kRowsPerChunk, [&](int64_t begin, int64_t end) { run_rows(gradient_rows, begin, end); });
  });
  return {grad_pred, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CPU, m) {
  m.impl("cosine_reconstruction_loss", &cosine_loss_cpu);
  m.impl("cosine_reconstruction_loss_backward", &cosine_loss_backward_cpu);
  m.impl("cosine_reconstruction_loss_grad", &cosine_loss_grad_cpu);
}

}  // namespace skelmae
