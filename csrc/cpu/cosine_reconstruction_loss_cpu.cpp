// CPU kernels of skelmae_ext::cosine_reconstruction_loss (loss and, for the inputs asked for,
// the gradient of the loss for grad_output = 1, in one pass over the rows), of its backward
// (that gradient scaled by grad_output) and of cosine_reconstruction_loss_grad (the gradient
// times grad_output computed from the inputs, in the same pass: the CPU autograd's route when
// the forward wrote no gradient, see skelmae_ext/ops/cosine_reconstruction_loss.py).
//
//   l_r  = max(1 - <p_r, t_r> / (max(|p_r|, 1e-12) * max(|t_r|, 1e-12)), 0) ^ beta
//   mean = sum_r mask_r * l_r / max(sum_r mask_r, 1);  sum = sum_r mask_r * l_r;
//   none = mask_r * l_r
//   dl_r/dp_r = g * (t / (np * nt) - [|p| >= eps] * c * p / np^2),  g = -beta (1 - c)^(beta - 1)
//   where 1 - c > 0, else 0 (NaN passes through every clamp: common/cosine_reconstruction_loss_math.h)
//   (and symmetrically for t_r), scaled by the row weight of the reduction.
//
// The per-row arithmetic is in common/cosine_reconstruction_loss_math.h (shared with CUDA). Rows run in
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
#include "../common/cosine_reconstruction_loss_math.h"
#include "../common/output_buffers.h"
#include "channel_tiles.h"
#include "cpu_isa.h"

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

// The gradients are whole [R, C] buffers, mostly zeros, that nothing reads before the next op:
// stores that bypass the caches (SSE streaming stores, float32 rows of whole 16-byte groups)
// skip reading each line before writing it. Other rows use plain stores.
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

// The loss's inputs checked and contiguous, with the number of rows the mask counts.
struct LossInputs {
  LossInputs(const at::Tensor& pred_in, const at::Tensor& target_in, const std::optional<at::Tensor>& mask_in,
             double beta_in, c10::string_view reduction_name) {
    check_cosine_reconstruction_loss_args(pred_in, target_in, mask_in, beta_in);
    beta = beta_in;
    reduction = parse_reduction(reduction_name);
    pred = pred_in.contiguous();
    target = target_in.contiguous();
    if (mask_in.has_value()) mask = mask_in->contiguous();
    rows = pred.size(0);
    channels = pred.size(1);
    counted = mask.has_value() ? mask->sum().item<int64_t>() : rows;
  }
  const bool* mask_data() const { return mask.has_value() ? mask->data_ptr<bool>() : nullptr; }
  template <typename Acc>
  Acc row_weight() const {
    return counted_row_weight<Acc>(reduction == Reduction::kMean, counted);
  }

  at::Tensor pred, target;
  std::optional<at::Tensor> mask;
  double beta;
  Reduction reduction;
  int64_t rows, channels, counted;
};

// Where one pass over the rows writes: per-row losses and / or per-chunk loss sums, and the
// gradients (null: not wanted), each row's scaled by scale[r or 0] (null: 1).
template <typename T>
struct RowPassOutputs {
  T* loss_rows = nullptr;
  double* chunk_sums = nullptr;
  T* grad_pred = nullptr;
  T* grad_target = nullptr;
  const T* scale = nullptr;
  bool per_row_scale = false;
};

// The one pass both ops make: counted rows' losses and gradients, zeros for the other rows
// (whose inputs are never read). Chunks of kRowsPerChunk rows run in parallel; each row's
// gradients are computed in L1, then stored.
template <typename T>
void cosine_row_pass(const LossInputs& in, const RowPassOutputs<T>& out) {
  using Acc = at::opmath_type<T>;
  const Acc beta = static_cast<Acc>(in.beta);
  const Acc row_weight = in.row_weight<Acc>();
  const int64_t rows = in.rows, channels = in.channels;
  const T* pred = in.pred.data_ptr<T>();
  const T* target = in.target.data_ptr<T>();
  const bool* mask = in.mask_data();
  const auto chunk_rows = [&](int64_t chunk_begin, int64_t chunk_end) SKELMAE_INLINE_BODY {
    std::vector<T> pred_row(out.grad_pred ? channels : 0), target_row(out.grad_target ? channels : 0);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      double sum = 0.0;
      const int64_t r_end = std::min(rows, (chunk + 1) * kRowsPerChunk);
      for (int64_t r = chunk * kRowsPerChunk; r < r_end; ++r) {
        prefetch_counted_row(pred, target, mask, r, rows, channels);
        const int64_t offset = r * channels;
        const bool counted_row = mask == nullptr || mask[r];
        Acc row_loss = Acc(0);
        if (counted_row) {
          const Acc scale = out.scale ? static_cast<Acc>(out.scale[out.per_row_scale ? r : 0]) : Acc(1);
          row_loss = cosine_row(pred + offset, target + offset, channels, beta, row_weight * scale,
                                out.grad_pred ? pred_row.data() : nullptr,
                                out.grad_target ? target_row.data() : nullptr);
        }
        sum += row_loss;
        if (out.loss_rows) out.loss_rows[r] = static_cast<T>(row_loss);
        if (out.grad_pred) store_row(out.grad_pred + offset, counted_row ? pred_row.data() : nullptr, channels);
        if (out.grad_target) store_row(out.grad_target + offset, counted_row ? target_row.data() : nullptr, channels);
      }
      if (out.chunk_sums) out.chunk_sums[chunk] = sum;
    }
    finish_streaming_stores();
  };
  at::parallel_for(0, ceil_div(rows, kRowsPerChunk), 1,
                   [&](int64_t begin, int64_t end) { run_rows(chunk_rows, begin, end); });
}

template <typename T>
T* data_if(const at::Tensor& tensor, bool wanted) {
  return wanted ? tensor.data_ptr<T>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& pred_in, const at::Tensor& target_in, const std::optional<at::Tensor>& mask_in,
    double beta, c10::string_view reduction_name, std::array<bool, 2> output_mask) {
  const LossInputs in(pred_in, target_in, mask_in, beta, reduction_name);
  const bool per_row = in.reduction == Reduction::kNone;
  at::Tensor loss = per_row ? in.pred.new_empty({in.rows}) : in.pred.new_empty({});
  at::Tensor grad_pred = new_output(in.pred, output_mask[0]);
  at::Tensor grad_target = new_output(in.target, output_mask[1]);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "cosine_reconstruction_loss_cpu", [&] {
    std::vector<double> chunk_sums(static_cast<size_t>(ceil_div(in.rows, kRowsPerChunk)), 0.0);  // long sums in double
    RowPassOutputs<scalar_t> out;
    out.loss_rows = data_if<scalar_t>(loss, per_row);
    out.chunk_sums = chunk_sums.data();
    out.grad_pred = data_if<scalar_t>(grad_pred, output_mask[0]);
    out.grad_target = data_if<scalar_t>(grad_target, output_mask[1]);
    cosine_row_pass(in, out);
    if (!per_row) {
      double total = 0.0;
      for (const double sum : chunk_sums) total += sum;
      loss.fill_(total * static_cast<double>(in.row_weight<at::opmath_type<scalar_t>>()));
    }
  });
  return {loss, grad_pred, grad_target};
}

// out[r, c] = scale[r or 0] * gradient[r, c]: the chain rule through the loss, reading
// grad_output in place (no host round trip is needed on the CPU either).
at::Tensor scale_rows(const at::Tensor& grad_output, const at::Tensor& gradient_in, bool needed) {
  if (!needed) return gradient_in.new_empty({0});
  const bool per_row = check_cosine_reconstruction_loss_backward_args(grad_output, gradient_in);
  const at::Tensor gradient = gradient_in.contiguous();
  const int64_t rows = gradient.size(0), channels = gradient.size(1);
  const at::Tensor scale = grad_output.contiguous().to(gradient.scalar_type());
  at::Tensor out = new_output(gradient);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gradient.scalar_type(), "cosine_reconstruction_loss_backward_cpu", [&] {
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

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& grad_pred,
                                                const at::Tensor& grad_target, std::array<bool, 2> output_mask) {
  return {scale_rows(grad_output, grad_pred, output_mask[0]),
          scale_rows(grad_output, grad_target, output_mask[1])};
}

// grad_output * d(loss)/d(pred) and / or d(loss)/d(target), from the inputs.
std::tuple<at::Tensor, at::Tensor> grad_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& pred_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& mask_in, double beta, c10::string_view reduction_name,
    std::array<bool, 2> output_mask) {
  const LossInputs in(pred_in, target_in, mask_in, beta, reduction_name);
  const bool per_row = check_cosine_reconstruction_loss_backward_args(grad_output_in, in.pred);
  const at::Tensor scale = grad_output_in.contiguous().to(in.pred.scalar_type());
  at::Tensor grad_pred = new_output(in.pred, output_mask[0]);
  at::Tensor grad_target = new_output(in.target, output_mask[1]);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "cosine_reconstruction_loss_grad_cpu", [&] {
    RowPassOutputs<scalar_t> out;
    out.grad_pred = data_if<scalar_t>(grad_pred, output_mask[0]);
    out.grad_target = data_if<scalar_t>(grad_target, output_mask[1]);
    out.scale = scale.data_ptr<scalar_t>();
    out.per_row_scale = per_row;
    cosine_row_pass(in, out);
  });
  return {grad_pred, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CPU, m) {
  m.impl("cosine_reconstruction_loss", &forward_cpu);
  m.impl("cosine_reconstruction_loss_backward", &backward_cpu);
  m.impl("cosine_reconstruction_loss_grad", &grad_cpu);
}

}  // namespace skelmae
