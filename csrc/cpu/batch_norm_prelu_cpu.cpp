// CPU kernels of skelmae_ext::batch_norm_prelu and its backward: BatchNorm over the rows of an
// [R, C] tensor fused with the PReLU that follows it in every GIN encoding layer. Outputs y and
// the statistics used (mean, biased variance); the caller updates the running statistics.
//
//   x^ = (x - m) s, s = 1 / sqrt(var + eps),  a = gamma x^ + beta,  y = a if a > 0 else w a
//   g = dy (a > 0 ? 1 : w);  dbeta = sum_r g;  dgamma = sum_r g x^;  dw = sum dy min(a, 0)
//   dx = gamma s (g - dbeta / R - x^ dgamma / R)      (eval: dx = gamma s g)
//
// Two passes each way: the per-channel sums (over fixed chunks of rows, in double, reduced in
// order: deterministic), then the element-wise pass. PyTorch's eager BatchNorm1d + PReLU take
// five passes and two intermediate tensors. Per-element math: common/batch_norm_prelu_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <vector>

#include "../common/batch_norm_prelu_math.h"
#include "channel_tiles.h"
#include "output_buffers.h"

namespace skelmae {
namespace {

constexpr int64_t kRowsPerChunk = 256;

// Per-channel sums of f(row, column) over the rows, in double, chunk by chunk then in order.
template <typename Fn>
std::vector<double> column_sums(int64_t rows, int64_t channels, int64_t outputs, const Fn& fn) {
  const int64_t chunks = num_chunks(rows, kRowsPerChunk);
  std::vector<double> partials(static_cast<size_t>(chunks * outputs * channels), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      double* sums = partials.data() + chunk * outputs * channels;
      const int64_t r_end = std::min(rows, (chunk + 1) * kRowsPerChunk);
      for (int64_t r = chunk * kRowsPerChunk; r < r_end; ++r) fn(r, sums);
    }
  });
  std::vector<double> total(static_cast<size_t>(outputs * channels), 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t i = 0; i < outputs * channels; ++i) total[i] += partials[chunk * outputs * channels + i];
  }
  return total;
}

void check_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                const at::Tensor& slope) {
  TORCH_CHECK(x.dim() == 2, "batch_norm_prelu: x must be [R, C], got shape ", x.sizes());
  const int64_t channels = x.size(1);
  TORCH_CHECK(weight.numel() == channels && bias.numel() == channels,
              "batch_norm_prelu: weight and bias must hold C=", channels, " values, got ",
              weight.sizes(), " and ", bias.sizes());
  TORCH_CHECK(slope.numel() == 1 || slope.numel() == channels,
              "batch_norm_prelu: prelu_weight must hold 1 or C=", channels, " values, got ",
              slope.sizes());
}

// Parameters and statistics as contiguous Acc vectors (a slope of one value is broadcast).
template <typename Acc>
std::vector<Acc> as_vector(const at::Tensor& t, int64_t channels) {
  const at::Tensor values = t.to(c10::CppTypeToScalarType<Acc>::value).contiguous().expand({channels}).contiguous();
  const Acc* data = values.data_ptr<Acc>();
  return std::vector<Acc>(data, data + channels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& slope, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double eps) {
  check_args(x_in, weight, bias, slope);
  TORCH_CHECK(training || (running_mean.has_value() && running_var.has_value()),
              "batch_norm_prelu: eval mode needs running_mean and running_var");
  const at::Tensor x = x_in.contiguous();
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
    std::vector<Acc> invstd_data(channels);
    if (training) {
      const std::vector<double> sums = column_sums(rows, channels, 2, [&](int64_t r, double* s) {
        const scalar_t* row = x_data + r * channels;
        for (int64_t c = 0; c < channels; ++c) {
          const double v = static_cast<double>(row[c]);
          s[c] += v;
          s[channels + c] += v * v;
        }
      });
      for (int64_t c = 0; c < channels; ++c) {
        const double m = sums[c] / std::max<int64_t>(rows, 1);
        const double biased_var = std::max(sums[channels + c] / std::max<int64_t>(rows, 1) - m * m, 0.0);
        mean_data[c] = static_cast<Acc>(m);
        var_data[c] = static_cast<Acc>(biased_var);
        invstd_data[c] = static_cast<Acc>(1.0 / std::sqrt(biased_var + eps));
      }
    } else {
      const std::vector<Acc> rm = as_vector<Acc>(*running_mean, channels);
      const std::vector<Acc> rv = as_vector<Acc>(*running_var, channels);
      for (int64_t c = 0; c < channels; ++c) {
        mean_data[c] = rm[c];
        var_data[c] = rv[c];
        invstd_data[c] = static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(rv[c]) + eps));
      }
    }
    const std::vector<Acc> gamma = as_vector<Acc>(weight, channels);
    const std::vector<Acc> beta = as_vector<Acc>(bias, channels);
    const std::vector<Acc> w = as_vector<Acc>(slope, channels);
    scalar_t* y_data = y.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, channels)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = x_data + r * channels;
        scalar_t* out = y_data + r * channels;
        for (int64_t c = 0; c < channels; ++c) {
          const auto terms = batch_norm_terms<Acc>(static_cast<Acc>(row[c]), mean_data[c], invstd_data[c], gamma[c], beta[c]);
          out[c] = static_cast<scalar_t>(prelu(terms.pre_activation, w[c]));
        }
      }
    });
  });
  return {y, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& slope, const at::Tensor& mean,
    const at::Tensor& var, bool training, double eps, std::array<bool, 4> output_mask) {
  check_args(x_in, weight, bias, slope);
  TORCH_CHECK(grad_y_in.sizes() == x_in.sizes(), "batch_norm_prelu_backward: grad_output shape ",
              grad_y_in.sizes(), " differs from x shape ", x_in.sizes());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad_y = grad_y_in.contiguous().to(x.scalar_type());
  const int64_t rows = x.size(0), channels = x.size(1);
  const auto [need_x, need_weight, need_bias, need_slope] = output_mask;
  at::Tensor grad_x = new_output(x, need_x);
  at::Tensor grad_weight = need_weight ? at::empty_like(weight) : weight.new_empty({0});
  at::Tensor grad_bias = need_bias ? at::empty_like(bias) : bias.new_empty({0});
  at::Tensor grad_slope = need_slope ? at::empty_like(slope) : slope.new_empty({0});

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_prelu_backward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    const scalar_t* dy_data = grad_y.data_ptr<scalar_t>();
    const std::vector<Acc> m = as_vector<Acc>(mean, channels);
    std::vector<Acc> s = as_vector<Acc>(var, channels);
    for (Acc& v : s) v = static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(v) + eps));  // invstd
    const std::vector<Acc> gamma = as_vector<Acc>(weight, channels);
    const std::vector<Acc> beta = as_vector<Acc>(bias, channels);
    const std::vector<Acc> w = as_vector<Acc>(slope, channels);
    // sums[0..C): sum g, [C..2C): sum g x^, [2C..3C): sum dy min(a, 0)
    const std::vector<double> sums = column_sums(rows, channels, 3, [&](int64_t r, double* out) {
      const scalar_t* row = x_data + r * channels;
      const scalar_t* dy = dy_data + r * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const auto terms = batch_norm_terms<Acc>(static_cast<Acc>(row[c]), m[c], s[c], gamma[c], beta[c]);
        const Acc d = static_cast<Acc>(dy[c]);
        const Acc g = prelu_input_grad(terms.pre_activation, w[c], d);
        out[c] += static_cast<double>(g);
        out[channels + c] += static_cast<double>(g * terms.normalized);
        out[2 * channels + c] += static_cast<double>(prelu_slope_grad(terms.pre_activation, d));
      }
    });
    if (need_x) {
      std::vector<Acc> mean_g(channels, Acc(0)), mean_g_normalized(channels, Acc(0));
      if (training) {
        for (int64_t c = 0; c < channels; ++c) {
          mean_g[c] = static_cast<Acc>(sums[c] / std::max<int64_t>(rows, 1));
          mean_g_normalized[c] = static_cast<Acc>(sums[channels + c] / std::max<int64_t>(rows, 1));
        }
      }
      scalar_t* dx_data = grad_x.data_ptr<scalar_t>();
      at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, channels)), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t* row = x_data + r * channels;
          const scalar_t* dy = dy_data + r * channels;
          scalar_t* dx = dx_data + r * channels;
          for (int64_t c = 0; c < channels; ++c) {
            const auto terms = batch_norm_terms<Acc>(static_cast<Acc>(row[c]), m[c], s[c], gamma[c], beta[c]);
            const Acc g = prelu_input_grad(terms.pre_activation, w[c], static_cast<Acc>(dy[c]));
            dx[c] = static_cast<scalar_t>(batch_norm_input_grad(g, terms.normalized, gamma[c], s[c],
                                                                mean_g[c], mean_g_normalized[c]));
          }
        }
      });
    }
    auto fill_channels = [&](at::Tensor& out, int64_t offset) {
      at::Tensor values = at::empty({channels}, at::kDouble);
      std::copy(sums.begin() + offset, sums.begin() + offset + channels, values.data_ptr<double>());
      out.copy_(out.numel() == 1 ? values.sum().reshape(out.sizes()) : values.reshape(out.sizes()));
    };
    if (need_bias) fill_channels(grad_bias, 0);
    if (need_weight) fill_channels(grad_weight, channels);
    if (need_slope) fill_channels(grad_slope, 2 * channels);
  });
  return {grad_x, grad_weight, grad_bias, grad_slope};
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CPU, m) {
  m.impl("batch_norm_prelu", &forward_cpu);
  m.impl("batch_norm_prelu_backward", &backward_cpu);
}

}  // namespace skelmae
