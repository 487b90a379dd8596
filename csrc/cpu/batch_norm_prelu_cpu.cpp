// CPU kernels of skelmae_ext::batch_norm_prelu and its backward: BatchNorm over the rows of an
// [R, C] tensor (or of a [B, C, H, W] one in its channels-last layout, [B*H*W, C]) fused with the
// PReLU after it (the tail of every GIN encoding layer and temporal branch); and the running
// statistics' update that follows it in training (batch_norm_update_stats).
//
//   x^ = (x - m) s, s = 1 / sqrt(v + eps),  a = gamma x^ + beta,  y = a if a > 0 else w a
//   g = dy if a > 0 else w dy;  dbeta = sum_r g;  dgamma = sum_r g x^;  dw = sum_r [a <= 0] dy a
//   dx = gamma s (g - dbeta / R - x^ dgamma / R)     (running statistics: dx = gamma s g)
//
// m and v are the batch mean and biased variance unless running statistics are passed in.
// Two passes each way, where PyTorch's BatchNorm1d + PReLU take five and keep the normalised
// tensor for the backward: the per-channel sums (chunks of rows in the accumulation type, the
// chunks merged in order in double: deterministic), then the element-wise pass.
// Per-element math: common/batch_norm_prelu_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <numeric>
#include <vector>

#include "../common/batch_norm_prelu_math.h"
#include "../common/checks.h"
#include "../common/output_buffers.h"
#include "channel_tiles.h"
#include "cpu_isa.h"

namespace skelmae {
namespace {

constexpr int64_t kRowsPerChunk = 64;  // a chunk of 64 x C values stays in L1/L2 between sweeps

// A per-channel parameter or statistic as C values of Acc (a single PReLU slope is repeated).
template <typename Acc>
std::vector<Acc> per_channel(const at::Tensor& t, int64_t channels) {
  const at::Tensor values =
      t.detach().to(at::kCPU, c10::CppTypeToScalarType<Acc>::value).expand({channels}).contiguous();
  const Acc* data = values.data_ptr<Acc>();
  return std::vector<Acc>(data, data + channels);
}

// Mean and M2 of channels [c0, c0 + W) over rows [r0, r1), two sweeps, the running sums in
// registers (summed straight into per-channel arrays, every row stored and reloaded them).
template <int W, typename scalar_t, typename Acc>
SKELMAE_INLINE_BODY inline void chunk_moments_tile(const scalar_t* x, int64_t r0, int64_t r1, int64_t channels,
                                                   int64_t c0, Acc* mean, Acc* m2) {
  Acc sum[W] = {}, squares[W] = {}, chunk_mean[W];
  for (int64_t r = r0; r < r1; ++r) {
    for (int i = 0; i < W; ++i) sum[i] += static_cast<Acc>(x[r * channels + c0 + i]);
  }
  for (int i = 0; i < W; ++i) chunk_mean[i] = sum[i] / static_cast<Acc>(r1 - r0);
  for (int64_t r = r0; r < r1; ++r) {
    for (int i = 0; i < W; ++i) {
      const Acc d = static_cast<Acc>(x[r * channels + c0 + i]) - chunk_mean[i];
      squares[i] += d * d;
    }
  }
  for (int i = 0; i < W; ++i) {
    mean[c0 + i] = chunk_mean[i];
    m2[c0 + i] = squares[i];
  }
}

// Batch mean and biased variance of every column: per chunk of rows a two-sweep mean and M2
// (the chunk is cache-resident), then the chunks merged in order in double.
template <typename scalar_t, typename Acc>
void batch_moments(const scalar_t* x, int64_t rows, int64_t channels, Acc* mean_out, Acc* var_out) {
  const int64_t chunks = ceil_div(rows, kRowsPerChunk);
  std::vector<Acc> chunk_mean(chunks * channels), chunk_m2(chunks * channels);
  const auto moments = [&](int64_t begin, int64_t end) SKELMAE_INLINE_BODY {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t r0 = chunk * kRowsPerChunk, r1 = std::min(rows, r0 + kRowsPerChunk);
      for_each_channel_tile(channels, [&](auto width, int64_t c0) {
        chunk_moments_tile<decltype(width)::value>(x, r0, r1, channels, c0, chunk_mean.data() + chunk * channels,
                                                   chunk_m2.data() + chunk * channels);
      });
    }
  };
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) { run_rows(moments, begin, end); });
  // Channels inner: their merges are independent, so they overlap instead of queueing on one
  // chain of divisions per channel.
  std::vector<double> mean(channels, 0.0), m2(channels, 0.0);
  double count = 0;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const double n = static_cast<double>(std::min(rows, (chunk + 1) * kRowsPerChunk) - chunk * kRowsPerChunk);
    for (int64_t c = 0; c < channels; ++c) {
      double merged_count = count;  // every channel's count, before this chunk
      merge_moments<double>(merged_count, mean[c], m2[c], n, chunk_mean[chunk * channels + c],
                            chunk_m2[chunk * channels + c]);
    }
    count += n;
  }
  for (int64_t c = 0; c < channels; ++c) {
    mean_out[c] = static_cast<Acc>(mean[c]);
    var_out[c] = static_cast<Acc>(count > 0 ? m2[c] / count : 0.0);
  }
}

// x [R, C], or [B, C, H, W] as the rows [B*H*W, C] of its channels-last layout (a copy into that
// layout where x has another): the rows the kernels sweep.
at::Tensor channel_rows(const at::Tensor& x) {
  if (x.dim() == 2) return x.contiguous();
  return x.contiguous(at::MemoryFormat::ChannelsLast)
      .permute({0, 2, 3, 1})
      .reshape({x.size(0) * x.size(2) * x.size(3), x.size(1)});
}

// Rows [R, C] as a tensor of x's shape: x's own for [R, C], channels-last for [B, C, H, W].
at::Tensor shaped_like(const at::Tensor& rows, const at::Tensor& x) {
  if (x.dim() == 2) return rows;
  return rows.view({x.size(0), x.size(2), x.size(3), x.size(1)}).permute({0, 3, 1, 2});
}

// The per-channel terms of both passes, from the statistics and the parameters:
// s = 1 / sqrt(v + eps), a = x k + b, and the PReLU slopes w (one slope repeated).
template <typename Acc>
struct ChannelTerms {
  ChannelTerms(const Acc* mean, const Acc* var, const at::Tensor& weight, const at::Tensor& bias,
               const at::Tensor& slope, int64_t channels, double eps)
      : invstd(channels), k(channels), b(channels), w(per_channel<Acc>(slope, channels)) {
    const std::vector<Acc> gamma = per_channel<Acc>(weight, channels), beta = per_channel<Acc>(bias, channels);
    for (int64_t c = 0; c < channels; ++c) {
      invstd[c] = static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(var[c]) + eps));
      const ChannelAffine<Acc> affine = batch_norm_affine(mean[c], invstd[c], gamma[c], beta[c]);
      k[c] = affine.k;
      b[c] = affine.b;
    }
  }

  std::vector<Acc> invstd, k, b, w;
};

// Rows per task of the element-wise passes: about 64 KiB of input.
int64_t row_grain(int64_t channels) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, channels)); }

// The loops over one row take restrict pointers: no aliasing to rule out, so they vectorise.
template <typename scalar_t, typename Acc>
SKELMAE_INLINE_BODY inline void forward_row(const scalar_t* __restrict x, scalar_t* __restrict y, const Acc* __restrict k,
                 const Acc* __restrict b, const Acc* __restrict w, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) y[c] = static_cast<scalar_t>(prelu(static_cast<Acc>(x[c]) * k[c] + b[c], w[c]));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& slope,
    const std::optional<at::Tensor>& mean_in, const std::optional<at::Tensor>& var_in, double eps) {
  check_batch_norm_prelu_args(x_in, weight, bias, slope);
  check_batch_norm_prelu_statistics(mean_in, var_in);
  const at::Tensor x = channel_rows(x_in);
  const int64_t rows = x.size(0), channels = x.size(1);
  const auto stats_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor y = new_output(x);
  at::Tensor mean = at::empty({channels}, x.options().dtype(stats_type));
  at::Tensor var = at::empty({channels}, x.options().dtype(stats_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_prelu_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    Acc* mean_data = mean.data_ptr<Acc>();
    Acc* var_data = var.data_ptr<Acc>();
    if (mean_in.has_value()) {
      mean.copy_(*mean_in);
      var.copy_(*var_in);
    } else {
      batch_moments<scalar_t, Acc>(x_data, rows, channels, mean_data, var_data);
    }
    const ChannelTerms<Acc> terms(mean_data, var_data, weight, bias, slope, channels, eps);
    const std::vector<Acc>&k = terms.k, &b = terms.b, &w = terms.w;
    scalar_t* y_data = y.data_ptr<scalar_t>();
    const auto apply = [&](int64_t begin, int64_t end) SKELMAE_INLINE_BODY {
      for (int64_t r = begin; r < end; ++r) {
        forward_row(x_data + r * channels, y_data + r * channels, k.data(), b.data(), w.data(), channels);
      }
    };
    at::parallel_for(0, rows, row_grain(channels), [&](int64_t begin, int64_t end) { run_rows(apply, begin, end); });
  });
  return {shaped_like(y, x_in), mean, var};
}

template <typename scalar_t, typename Acc>
SKELMAE_INLINE_BODY inline void backward_sums_row(const scalar_t* __restrict x, const scalar_t* __restrict dy, const Acc* __restrict mean,
                       const Acc* __restrict invstd, const Acc* __restrict k, const Acc* __restrict b,
                       const Acc* __restrict w, Acc* __restrict sum_g, Acc* __restrict sum_g_normalized,
                       Acc* __restrict sum_slope, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    const Acc xv = static_cast<Acc>(x[c]), d = static_cast<Acc>(dy[c]);
    const Acc a = xv * k[c] + b[c];
    const Acc g = prelu_input_grad(a, w[c], d);
    sum_g[c] += g;
    sum_g_normalized[c] += g * ((xv - mean[c]) * invstd[c]);
    sum_slope[c] += prelu_slope_grad(a, d);
  }
}

template <typename scalar_t, typename Acc>
SKELMAE_INLINE_BODY inline void input_grad_row(const scalar_t* __restrict x, const scalar_t* __restrict dy, scalar_t* __restrict dx,
                    const Acc* __restrict mean, const Acc* __restrict invstd, const Acc* __restrict k,
                    const Acc* __restrict b, const Acc* __restrict w, const Acc* __restrict mean_g,
                    const Acc* __restrict mean_g_normalized, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    const Acc xv = static_cast<Acc>(x[c]);
    const Acc g = prelu_input_grad(xv * k[c] + b[c], w[c], static_cast<Acc>(dy[c]));
    dx[c] = static_cast<scalar_t>(
        batch_norm_input_grad(g, (xv - mean[c]) * invstd[c], k[c], mean_g[c], mean_g_normalized[c]));
  }
}

// Per-channel sums of the backward: [0, C) g, [C, 2C) g x^, [2C, 3C) the slope's gradient.
template <typename scalar_t, typename Acc>
std::vector<double> backward_sums(const scalar_t* x, const scalar_t* dy, int64_t rows, int64_t channels,
                                  const Acc* mean, const Acc* invstd, const Acc* k, const Acc* b,
                                  const Acc* w) {
  const int64_t chunks = ceil_div(rows, kRowsPerChunk);
  std::vector<Acc> partials(chunks * 3 * channels);
  const auto sums = [&](int64_t begin, int64_t end) SKELMAE_INLINE_BODY {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      Acc* sum_g = partials.data() + chunk * 3 * channels;
      Acc* sum_g_normalized = sum_g + channels;
      Acc* sum_slope = sum_g + 2 * channels;
      const int64_t r1 = std::min(rows, (chunk + 1) * kRowsPerChunk);
      for (int64_t r = chunk * kRowsPerChunk; r < r1; ++r) {
        backward_sums_row(x + r * channels, dy + r * channels, mean, invstd, k, b, w, sum_g, sum_g_normalized,
                          sum_slope, channels);
      }
    }
  };
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) { run_rows(sums, begin, end); });
  std::vector<double> total(3 * channels, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t i = 0; i < 3 * channels; ++i) total[i] += partials[chunk * 3 * channels + i];
  }
  return total;
}

at::Tensor parameter_grad(const std::vector<double>& sums, int64_t offset, int64_t size, const at::Tensor& like) {
  at::Tensor out = at::empty({size}, like.options().dtype(at::kDouble));
  std::copy(sums.begin() + offset, sums.begin() + offset + size, out.data_ptr<double>());
  return out.to(like.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& slope, const at::Tensor& mean, const at::Tensor& var, double eps, bool batch_stats,
    std::array<bool, 4> output_mask) {
  check_batch_norm_prelu_args(x_in, weight, bias, slope);
  check_same_shape("batch_norm_prelu_backward", "grad_output", grad_y_in, "x", x_in);
  const at::Tensor x = channel_rows(x_in);
  const at::Tensor grad_y = channel_rows(grad_y_in.to(x.scalar_type()));
  const int64_t rows = x.size(0), channels = x.size(1);
  const auto [need_x, need_weight, need_bias, need_slope] = output_mask;
  at::Tensor grad_x = new_output(x, need_x);
  at::Tensor grad_weight = weight.new_empty({0}), grad_bias = bias.new_empty({0}), grad_slope = slope.new_empty({0});

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_prelu_backward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    const scalar_t* dy_data = grad_y.data_ptr<scalar_t>();
    const std::vector<Acc> m = per_channel<Acc>(mean, channels), v = per_channel<Acc>(var, channels);
    const ChannelTerms<Acc> terms(m.data(), v.data(), weight, bias, slope, channels, eps);
    const std::vector<Acc>&invstd = terms.invstd, &k = terms.k, &b = terms.b, &w = terms.w;
    const std::vector<double> sums =
        backward_sums<scalar_t, Acc>(x_data, dy_data, rows, channels, m.data(), invstd.data(), k.data(), b.data(), w.data());
    if (need_weight) grad_weight = parameter_grad(sums, channels, channels, weight);
    if (need_bias) grad_bias = parameter_grad(sums, 0, channels, bias);
    if (need_slope) {
      std::vector<double> slope_sums(sums.begin() + 2 * channels, sums.end());
      if (slope.size(0) == 1) slope_sums = {std::accumulate(slope_sums.begin(), slope_sums.end(), 0.0)};
      grad_slope = parameter_grad(slope_sums, 0, slope.size(0), slope);
    }
    if (!need_x) return;
    std::vector<Acc> mean_g(channels, Acc(0)), mean_g_normalized(channels, Acc(0));
    if (batch_stats && rows > 0) {
      for (int64_t c = 0; c < channels; ++c) {
        mean_g[c] = static_cast<Acc>(sums[c] / rows);
        mean_g_normalized[c] = static_cast<Acc>(sums[channels + c] / rows);
      }
    }
    scalar_t* dx_data = grad_x.data_ptr<scalar_t>();
    const auto input_grad = [&](int64_t begin, int64_t end) SKELMAE_INLINE_BODY {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t offset = r * channels;
        input_grad_row(x_data + offset, dy_data + offset, dx_data + offset, m.data(), invstd.data(), k.data(),
                       b.data(), w.data(), mean_g.data(), mean_g_normalized.data(), channels);
      }
    };
    at::parallel_for(0, rows, row_grain(channels), [&](int64_t begin, int64_t end) { run_rows(input_grad, begin, end); });
  });
  return {need_x ? shaped_like(grad_x, x_in) : grad_x, grad_weight, grad_bias, grad_slope};
}

// As F.batch_norm in training: the running statistics move towards the batch's by `momentum`
// (the unbiased variance of `count` values into the running one), one op per layer and step.
void update_stats_cpu(at::Tensor& running_mean, at::Tensor& running_var, at::Tensor& num_batches_tracked,
                      const at::Tensor& mean, const at::Tensor& var, double momentum, int64_t count) {
  TORCH_CHECK(count > 1, "batch_norm_update_stats: count must be > 1 (an unbiased variance), got ", count);
  num_batches_tracked.add_(1);
  running_mean.lerp_(mean.to(running_mean.scalar_type()), momentum);
  running_var.lerp_((var * (static_cast<double>(count) / static_cast<double>(count - 1))).to(running_var.scalar_type()),
                    momentum);
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CPU, m) {
  m.impl("batch_norm_prelu", &forward_cpu);
  m.impl("batch_norm_prelu_backward", &backward_cpu);
  m.impl("batch_norm_update_stats", &update_stats_cpu);
}

}  // namespace skelmae
