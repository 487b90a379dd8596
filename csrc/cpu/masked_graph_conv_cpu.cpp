// CPU kernels of skelmae_ext::masked_graph_conv and its backward.
//
//   x~[g, v] = token if mask[g, v] else x[g, v]
//   y[g, v]  = (1 + eps) * x~[g, v] + sum_u A[v, u] * x~[g, u]
//
//   dx[g, v] = 0 if mask[g, v] else sum_u S[u, v] * dy[g, u],   S = A + (1 + eps) I
//   dtoken   = sum over masked (g, v) of sum_u S[u, v] * dy[g, u]
//   deps     = sum_{g, v, c} x~[g, v, c] * dy[g, v, c]
//
// The per-joint arithmetic is in common/masked_graph_conv_math.h (shared with CUDA). Graphs run in
// parallel; the token and eps gradients are reduced in two stages (fixed chunks of graphs,
// then the chunk partials in order), so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "../common/checks.h"
#include "../common/masked_graph_conv_math.h"
#include "../common/output_buffers.h"
#include "channel_tiles.h"

namespace skelmae {
namespace {

constexpr int64_t kGraphsPerChunk = 64;

template <typename Acc>
struct HostNeighborTable {
  std::vector<int32_t> offset, index;
  std::vector<Acc> weight;

  HostNeighborTable(const at::Tensor& adjacency, bool transpose) {
    const at::Tensor dense =
        adjacency.to(c10::CppTypeToScalarType<Acc>::value).contiguous();
    const auto joints = static_cast<int32_t>(dense.size(0));
    offset.resize(joints + 1);
    index.resize(static_cast<size_t>(joints) * joints);
    weight.resize(static_cast<size_t>(joints) * joints);
    fill_neighbor_table(dense.data_ptr<Acc>(), joints, transpose, offset.data(), index.data(),
                        weight.data());
  }

  NeighborTable<Acc> view() const { return {offset.data(), index.data(), weight.data()}; }
};

const bool* mask_data(const std::optional<at::Tensor>& mask) {
  return mask.has_value() ? mask->data_ptr<bool>() : nullptr;
}

at::Tensor forward_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in,
                       const at::Tensor& token_in, const at::Tensor& adjacency,
                       const at::Tensor& eps) {
  check_masked_graph_conv_args(x_in, mask_in, token_in, adjacency, eps);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor token = token_in.contiguous();
  const std::optional<at::Tensor> mask =
      mask_in.has_value() ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  at::Tensor y = new_output(x);
  const int64_t graphs = x.size(0), joints = x.size(1), channels = x.size(2);
  const int64_t graph_size = joints * channels;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, graph_size));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_graph_conv_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const HostNeighborTable<Acc> host_table(adjacency, /*transpose=*/false);
    const NeighborTable<Acc> table = host_table.view();
    const Acc self_weight = Acc(1) + eps.to(at::kDouble).item<double>();
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    const scalar_t* token_data = token.data_ptr<scalar_t>();
    const bool* mask_ptr = mask_data(mask);
    scalar_t* y_data = y.data_ptr<scalar_t>();
    at::parallel_for(0, graphs, grain, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const scalar_t* graph = x_data + g * graph_size;
        const bool* graph_mask = mask_ptr ? mask_ptr + g * joints : nullptr;
        for (int32_t v = 0; v < joints; ++v) {
          scalar_t* y_row = y_data + g * graph_size + v * channels;
          for_each_channel_tile(channels, [&](auto width, int64_t c0) {
            graph_conv_forward_tile<decltype(width)::value>(y_row, graph, channels, graph_mask,
                                                            token_data, table, v, self_weight, c0);
          });
        }
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in,
    const at::Tensor& token_in, const at::Tensor& adjacency, const at::Tensor& eps,
    std::array<bool, 3> output_mask) {
  check_masked_graph_conv_args(x_in, mask_in, token_in, adjacency, eps);
  check_same_shape("masked_graph_conv_backward", "grad_output", grad_y_in, "x", x_in);
  const auto [need_x, need_token, need_eps] = output_mask;
  const at::Tensor grad_y = grad_y_in.contiguous().to(x_in.scalar_type());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor token = token_in.contiguous();
  const std::optional<at::Tensor> mask =
      mask_in.has_value() ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const int64_t graphs = x.size(0), joints = x.size(1), channels = x.size(2);
  const int64_t graph_size = joints * channels;
  const int64_t chunks = ceil_div(graphs, kGraphsPerChunk);

  at::Tensor grad_x = new_output(x, need_x);
  at::Tensor grad_token = new_output(token, need_token);
  at::Tensor grad_eps = new_output(eps, need_eps);
  if (!need_x && !need_token && !need_eps) return {grad_x, grad_token, grad_eps};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_graph_conv_backward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const HostNeighborTable<Acc> host_table(adjacency, /*transpose=*/true);
    const NeighborTable<Acc> reversed = host_table.view();
    const Acc self_weight = Acc(1) + eps.to(at::kDouble).item<double>();
    const scalar_t* grad_y_data = grad_y.data_ptr<scalar_t>();
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    const scalar_t* token_data = token.data_ptr<scalar_t>();
    const bool* mask_ptr = mask_data(mask);
    scalar_t* grad_x_data = need_x ? grad_x.data_ptr<scalar_t>() : nullptr;
    std::vector<double> token_partials(static_cast<size_t>(chunks * channels), 0.0);
    std::vector<double> eps_partials(static_cast<size_t>(chunks), 0.0);

    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        double* token_sum = token_partials.data() + chunk * channels;
        double eps_lanes[kCpuTile] = {};
        const int64_t g_end = std::min(graphs, (chunk + 1) * kGraphsPerChunk);
        for (int64_t g = chunk * kGraphsPerChunk; g < g_end; ++g) {
          const int64_t offset = g * graph_size;
          const bool* graph_mask = mask_ptr ? mask_ptr + g * joints : nullptr;
          for (int32_t v = 0; v < joints; ++v) {
            const int64_t row = offset + v * channels;
            for_each_channel_tile(channels, [&](auto width, int64_t c0) {
              graph_conv_backward_tile<decltype(width)::value>(
                  grad_x_data ? grad_x_data + row : nullptr, token_sum + c0,
                  need_eps ? eps_lanes : nullptr, grad_y_data + offset, channels, x_data + row,
                  graph_mask, token_data, reversed, v, self_weight, c0);
            });
          }
        }
        eps_partials[chunk] = lane_sum<kCpuTile>(eps_lanes);
      }
    });

    if (need_token) {
      scalar_t* out = grad_token.data_ptr<scalar_t>();
      for (int64_t c = 0; c < channels; ++c) {
        double total = 0.0;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) total += token_partials[chunk * channels + c];
        out[c] = static_cast<scalar_t>(total);
      }
    }
    if (need_eps) {
      double total = 0.0;
      for (const double partial : eps_partials) total += partial;
      grad_eps.fill_(total);
    }
  });
  return {grad_x, grad_token, grad_eps};
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CPU, m) {
  m.impl("masked_graph_conv", &forward_cpu);
  m.impl("masked_graph_conv_backward", &backward_cpu);
}

}  // namespace skelmae
