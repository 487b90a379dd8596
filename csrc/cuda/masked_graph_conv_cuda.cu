// CUDA kernels of skelmae_ext::masked_graph_conv and its backward.
//
//   x~[g, v] = token if mask[g, v] else x[g, v]
//   y[g, v]  = (1 + eps) * x~[g, v] + sum_u A[v, u] * x~[g, u]
//
//   dx[g, v] = 0 if mask[g, v] else sum_u S[u, v] * dy[g, u],   S = A + (1 + eps) I
//   dtoken   = sum over masked (g, v) of sum_u S[u, v] * dy[g, u]
//   deps     = sum_{g, v, c} x~[g, v, c] * dy[g, v, c]
//
// The per-joint arithmetic is common/masked_graph_conv_math.h, the code the CPU kernels run (one
// channel per thread here). Work layout:
// - the adjacency becomes a neighbour table on the device: one thread per joint runs
//   fill_neighbor_row (the rows of the CPU's fill_neighbor_table). Each block copies the table
//   to shared memory when it is small (V <= 38 in float: the body layouts of 17 to 25 joints).
// - a block takes tiles of graphs_per_tile consecutive graphs x `width` channels (blockIdx.y
//   picks the channels), stages the tile in shared memory (x~ forward; dy backward, the rows a
//   joint gathers from its neighbours, and x~ when eps needs its gradient), then thread t
//   computes channel t % width of tile rows t / width, + rows_per_pass, ...: global loads and
//   stores are coalesced over channels, and the staging loads are batched.
// - eps is read from its device tensor, and the token and eps gradients are reduced in two
//   stages: per-block partials in double, then one block per output sums them in a fixed
//   order. No atomics and no host sync: bitwise reproducible and CUDA-graph capturable.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "../common/checks.h"
#include "../common/masked_graph_conv_math.h"
#include "kernel_utils.cuh"

namespace skelmae {
namespace {

constexpr int64_t kMaxWidth = 128;                   // channels of a tile row
constexpr int64_t kTargetTileBytes = 16 * 1024;      // graphs per tile: about this much
                                                     // staged, so that 8 blocks fit on an SM
constexpr int64_t kMaxTileBytes = 32 * 1024;         // one graph's tiles at most (width shrinks)
constexpr int64_t kMaxSharedTableBytes = 12 * 1024;  // a larger table is read from global memory
// Dynamic shared memory (tile, table, alignment) plus the backward's static arrays stay under
// the 48 KiB a kernel gets without opting in.
static_assert(kMaxTileBytes + 16 + kMaxSharedTableBytes + 16 + (kThreads + kWarps) * 8 <=
                  48 * 1024,
              "shared memory budget");

// Launch configuration, computed on the host.
struct TileConfig {
  int64_t graphs;
  int64_t channels;
  int32_t joints;
  int32_t width;            // channels of a tile row: block y takes [y * width, (y + 1) * width)
  int32_t rows_per_pass;    // kThreads / width
  int32_t graphs_per_tile;
  int32_t tile_elements;    // graphs_per_tile * joints * width: one staged tensor's tile
  int64_t tiles;            // ceil(graphs / graphs_per_tile)
  int32_t table_offset;     // bytes into shared memory of the table's offsets and indices,
                            // -1 when the table stays in global memory
  int32_t weight_offset;    // bytes into shared memory of the table's weights
  int32_t shared_bytes;

  dim3 grid() const {
    return dim3(static_cast<unsigned>(std::min(tiles, kMaxBlocks)),
                static_cast<unsigned>(ceil_div(channels, width)));
  }
};

int64_t round_up(int64_t bytes, int64_t alignment) { return ceil_div(bytes, alignment) * alignment; }

// The configuration for `staged` tensors staged per tile.
template <typename T, typename Acc>
TileConfig tile_config(int64_t graphs, int32_t joints, int64_t channels, int64_t staged) {
  // Equal chunks of at most kMaxWidth channels (C = 200: two of 100, not 128 + 72).
  int64_t width = ceil_div(channels, ceil_div(channels, kMaxWidth));
  const auto graph_bytes = [&] { return staged * width * joints * static_cast<int64_t>(sizeof(T)); };
  while (width > 1 && graph_bytes() > kMaxTileBytes) width = ceil_div(width, 2);
  TORCH_CHECK(graph_bytes() <= kMaxTileBytes, "masked_graph_conv: the CUDA kernels take at most ",
              kMaxTileBytes / (staged * sizeof(T)), " joints in this dtype, got ", joints);
  TORCH_CHECK(ceil_div(channels, width) <= 65535, "masked_graph_conv: too many channels (",
              channels, ") for the CUDA kernels");
  TileConfig config{};
  config.graphs = graphs;
  config.channels = channels;
  config.joints = joints;
  config.width = static_cast<int32_t>(width);
  config.rows_per_pass = static_cast<int32_t>(kThreads / width);
  config.graphs_per_tile =
      static_cast<int32_t>(std::clamp<int64_t>(kTargetTileBytes / graph_bytes(), 1, graphs));
  config.tile_elements = static_cast<int32_t>(config.graphs_per_tile * joints * width);
  config.tiles = ceil_div(graphs, config.graphs_per_tile);
  const int64_t tile_bytes = round_up(config.graphs_per_tile * graph_bytes(), 16);
  // The host cannot know the number of entries without a sync: room for V * V.
  const int64_t index_bytes = round_up((joints + 1 + int64_t(joints) * joints) * 4, 16);
  const int64_t table_bytes = index_bytes + int64_t(joints) * joints * sizeof(Acc);
  const bool shared_table = table_bytes <= kMaxSharedTableBytes;
  config.table_offset = shared_table ? static_cast<int32_t>(tile_bytes) : -1;
  config.weight_offset = static_cast<int32_t>(tile_bytes + index_bytes);
  config.shared_bytes = static_cast<int32_t>(tile_bytes + (shared_table ? table_bytes : 0));
  return config;
}

// Builds the table in one block: each thread counts, then fills, the rows of its joints; thread 0
// turns the counts into offsets in between (V additions).
template <typename Acc>
__global__ void build_neighbor_table_kernel(const Acc* __restrict__ adjacency, int32_t joints,
                                            bool transpose, int32_t* __restrict__ offset,
                                            int32_t* __restrict__ index,
                                            Acc* __restrict__ weight) {
  for (int32_t v = threadIdx.x; v < joints; v += blockDim.x) {
    offset[v + 1] = fill_neighbor_row<Acc>(adjacency, joints, transpose, v, nullptr, nullptr);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    offset[0] = 0;
    for (int32_t v = 1; v <= joints; ++v) offset[v] += offset[v - 1];
  }
  __syncthreads();
  for (int32_t v = threadIdx.x; v < joints; v += blockDim.x) {
    fill_neighbor_row<Acc>(adjacency, joints, transpose, v, index + offset[v], weight + offset[v]);
  }
}

// The neighbour table of an adjacency, on its device; the tensors own it.
template <typename Acc>
struct DeviceNeighborTable {
  int64_t joints;
  at::Tensor entries;  // int32: offset [V + 1], then index [V * V]
  at::Tensor weights;  // Acc [V * V]

  NeighborTable<Acc> view() const {
    const int32_t* offset = entries.data_ptr<int32_t>();
    return {offset, offset + joints + 1, weights.data_ptr<Acc>()};
  }
};

template <typename Acc>
DeviceNeighborTable<Acc> build_neighbor_table(const at::Tensor& adjacency, bool transpose,
                                              cudaStream_t stream) {
  const at::Tensor dense = adjacency.to(c10::CppTypeToScalarType<Acc>::value).contiguous();
  const int64_t joints = dense.size(0);
  const at::Tensor entries = at::empty({joints + 1 + joints * joints}, dense.options().dtype(at::kInt));
  const at::Tensor weights = at::empty({joints * joints}, dense.options());
  int32_t* offset = entries.data_ptr<int32_t>();
  const auto threads = static_cast<unsigned>(std::min<int64_t>(1024, round_up(joints, 32)));
  build_neighbor_table_kernel<Acc><<<1, threads, 0, stream>>>(
      dense.data_ptr<Acc>(), static_cast<int32_t>(joints), transpose, offset,
      offset + joints + 1, weights.data_ptr<Acc>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {joints, entries, weights};
}

// The block's view of the table: copied to shared memory when the config made room for it
// (visible to every thread after the first tile's __syncthreads).
template <typename Acc>
__device__ __forceinline__ NeighborTable<Acc> block_table(const NeighborTable<Acc>& table,
                                                          const TileConfig& config,
                                                          unsigned char* shared) {
  if (config.table_offset < 0) return table;
  int32_t* offset = reinterpret_cast<int32_t*>(shared + config.table_offset);
  int32_t* index = offset + config.joints + 1;
  Acc* weight = reinterpret_cast<Acc*>(shared + config.weight_offset);
  const int32_t entries = table.offset[config.joints];
  for (int32_t i = threadIdx.x; i <= config.joints; i += kThreads) offset[i] = table.offset[i];
  for (int32_t i = threadIdx.x; i < entries; i += kThreads) {
    index[i] = table.index[i];
    weight[i] = table.weight[i];
  }
  return {offset, index, weight};
}

__device__ __forceinline__ int64_t chunk_begin(const TileConfig& config) {
  return int64_t(blockIdx.y) * config.width;
}

// Rows of a [G, V, C] tensor to stage: the token's where mask is set (mask may be null).
template <typename T>
struct Staged {
  const T* data;
  const bool* mask;
  const T* token;
};

// For each tile of the block (tiles blockIdx.x, + gridDim.x, ...): stages the tile's rows of
// `first`, and of `second` unless its data is null, for the block's channels into `tiles`
// (second at + tile_elements), then calls fn(graph, joint, lane, tile_graph, row) for each
// (graph, joint) this thread handles: lane is its channel within the chunk, tile_graph the
// graph's rows in the first tile (width apart), row the offset of (graph, joint, first channel
// of the chunk) in the [G, V, C] tensors. A thread stages the elements it later computes.
template <typename T, typename Fn>
__device__ __forceinline__ void for_each_tile_row(const TileConfig& config, T* tiles,
                                                  const Staged<T>& first, const Staged<T>& second,
                                                  Fn&& fn) {
  const int64_t first_channel = chunk_begin(config);
  const int32_t lane = threadIdx.x % config.width;
  const int32_t first_row = threadIdx.x / config.width;
  // Threads past rows_per_pass rows, or past the last channel of a narrower last chunk, only
  // take part in the barriers.
  const bool active = first_row < config.rows_per_pass &&
                      lane < std::min<int64_t>(config.width, config.channels - first_channel);
  // Rows advance by rows_per_pass: (graph, joint) advance by these, without a division.
  const int32_t graph_step = config.rows_per_pass / config.joints;
  const int32_t joint_step = config.rows_per_pass % config.joints;
  for (int64_t t = blockIdx.x; t < config.tiles; t += gridDim.x) {
    const int64_t first_graph = t * config.graphs_per_tile;
    const int32_t rows = static_cast<int32_t>(
        std::min<int64_t>(config.graphs_per_tile, config.graphs - first_graph) * config.joints);
    const int64_t base = first_graph * config.joints * config.channels + first_channel;
    const auto stage = [&](T* tile, const Staged<T>& source) {
      const T* data = source.data + base;
      const bool* mask = source.mask != nullptr ? source.mask + first_graph * config.joints : nullptr;
      const T* token = source.token != nullptr ? source.token + first_channel : nullptr;
      // Unrolled so that each thread has several loads in flight (memory-level parallelism).
#pragma unroll 4
      for (int32_t row = first_row; row < rows; row += config.rows_per_pass) {
        tile[row * config.width + lane] =
            substituted_row(data, mask, token, row, config.channels)[lane];
      }
    };
    __syncthreads();  // the previous tiles have been read
    if (active) {
      stage(tiles, first);
      if (second.data != nullptr) stage(tiles + config.tile_elements, second);
    }
    __syncthreads();
    if (active) {
      int32_t graph = first_row / config.joints;
      int32_t joint = first_row % config.joints;
      for (int32_t row = first_row; row < rows; row += config.rows_per_pass) {
        fn(first_graph + graph, joint, lane, tiles + graph * config.joints * config.width,
           base + int64_t(row) * config.channels);
        graph += graph_step;
        joint += joint_step;
        if (joint >= config.joints) {
          joint -= config.joints;
          ++graph;
        }
      }
    }
  }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    graph_conv_forward_kernel(T* __restrict__ y, const T* __restrict__ x,
                              const bool* __restrict__ mask, const T* __restrict__ token,
                              NeighborTable<Acc> table, const Acc* __restrict__ eps,
                              TileConfig config) {
  extern __shared__ __align__(16) unsigned char shared[];
  const NeighborTable<Acc> neighbors = block_table(table, config, shared);
  const Acc self_weight = Acc(1) + *eps;
  // The tile holds x~ (the token is substituted while staging, so masked joints' x is never
  // read): the shared function sees no mask.
  for_each_tile_row(config, reinterpret_cast<T*>(shared), Staged<T>{x, mask, token},
                    Staged<T>{nullptr, nullptr, nullptr},
                    [&](int64_t, int32_t joint, int32_t lane, const T* tile_graph, int64_t row) {
                      graph_conv_forward_tile<1>(y + row, tile_graph, config.width,
                                                 static_cast<const bool*>(nullptr),
                                                 static_cast<const T*>(nullptr), neighbors,
                                                 joint, self_weight, int64_t(lane));
                    });
}

// Writes dx (when grad_x is not null) and the block's partials: the token gradient of channel c
// at partials[c * gridDim.x + blockIdx.x], the eps gradient (kEps) at
// partials[(C + blockIdx.y) * gridDim.x + blockIdx.x].
template <typename T, typename Acc, bool kEps>
__global__ void __launch_bounds__(kThreads)
    graph_conv_backward_kernel(T* __restrict__ grad_x, double* __restrict__ partials,
                               const T* __restrict__ grad_y, const T* __restrict__ x,
                               const bool* __restrict__ mask, const T* __restrict__ token,
                               NeighborTable<Acc> reversed, const Acc* __restrict__ eps,
                               TileConfig config) {
  extern __shared__ __align__(16) unsigned char shared[];
  __shared__ double token_slots[kThreads];
  __shared__ double warp_sums[kWarps];
  const NeighborTable<Acc> neighbors = block_table(reversed, config, shared);
  const Acc self_weight = Acc(1) + *eps;
  const int64_t first_channel = chunk_begin(config);
  const T* chunk_token = token + first_channel;
  // This thread's channel summed over its rows, in row order.
  double token_sum = 0.0, eps_sum = 0.0;
  // dy is staged; so is x~ when eps needs it (its rows are then read from the second tile).
  for_each_tile_row(
      config, reinterpret_cast<T*>(shared), Staged<T>{grad_y, nullptr, nullptr},
      Staged<T>{kEps ? x : nullptr, mask, token},
      [&](int64_t graph, int32_t joint, int32_t lane, const T* tile_graph, int64_t row) {
        const T* x_tilde_row =
            kEps ? tile_graph + config.tile_elements + joint * config.width : nullptr;
        graph_conv_backward_tile<1>(grad_x != nullptr ? grad_x + row : nullptr, &token_sum,
                                    kEps ? &eps_sum : nullptr, tile_graph, config.width,
                                    x_tilde_row,
                                    mask != nullptr ? mask + graph * config.joints : nullptr,
                                    chunk_token, neighbors, joint, self_weight, int64_t(lane));
      });
  // Threads with the same lane hold the same channel: thread `lane` sums them in row order.
  token_slots[threadIdx.x] = token_sum;
  __syncthreads();
  if (threadIdx.x < std::min<int64_t>(config.width, config.channels - first_channel)) {
    double channel_sum = 0.0;
    for (int32_t r = 0; r < config.rows_per_pass; ++r) {
      channel_sum += token_slots[r * config.width + threadIdx.x];
    }
    partials[(first_channel + threadIdx.x) * gridDim.x + blockIdx.x] = channel_sum;
  }
  if (kEps) {
    const double total = block_sum(eps_sum, warp_sums);
    if (threadIdx.x == 0) {
      partials[(config.channels + blockIdx.y) * gridDim.x + blockIdx.x] = total;
    }
  }
}

// Second stage: out[j] = sum of partials[j * length, (j + 1) * length) in a fixed order, one
// block per output.
template <typename Out>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const double* __restrict__ partials, int64_t length,
                        Out* __restrict__ out) {
  __shared__ double warp_sums[kWarps];
  const double total = block_sum_of(partials + blockIdx.x * length, length, warp_sums);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<Out>(total);
}

// The checked arguments of both ops: the device guard is set (to x's device) once the checks
// have passed, then the inputs are made contiguous on that device.
at::Device checked_device(const char* op, const at::Tensor& x,
                          const std::optional<at::Tensor>& mask, const at::Tensor& token,
                          const at::Tensor& adjacency, const at::Tensor& eps) {
  check_masked_graph_conv_args(x, mask, token, adjacency, eps);
  if (mask.has_value()) check_device(op, "mask", *mask, x.device());
  check_device(op, "token", token, x.device());
  check_device(op, "adjacency", adjacency, x.device());
  check_device(op, "eps", eps, x.device());
  return x.device();
}

struct Inputs {
  c10::cuda::CUDAGuard guard;
  at::Tensor x, token;
  std::optional<at::Tensor> mask;

  Inputs(const char* op, const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in,
         const at::Tensor& token_in, const at::Tensor& adjacency, const at::Tensor& eps)
      : guard(checked_device(op, x_in, mask_in, token_in, adjacency, eps)),
        x(x_in.contiguous()),
        token(token_in.contiguous()),
        mask(mask_in.has_value() ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt) {}
};

const bool* mask_data(const std::optional<at::Tensor>& mask) {
  return mask.has_value() ? mask->data_ptr<bool>() : nullptr;
}

template <typename Acc>
at::Tensor accumulate_eps(const at::Tensor& eps) {
  return eps.to(c10::CppTypeToScalarType<Acc>::value);  // on the device, no copy if already Acc
}

at::Tensor forward_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in,
                        const at::Tensor& token_in, const at::Tensor& adjacency,
                        const at::Tensor& eps) {
  const Inputs in("masked_graph_conv", x_in, mask_in, token_in, adjacency, eps);
  at::Tensor y = new_output(in.x);
  if (in.x.numel() == 0) return y;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "masked_graph_conv_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const TileConfig config = tile_config<scalar_t, Acc>(
        in.x.size(0), static_cast<int32_t>(in.x.size(1)), in.x.size(2), /*staged=*/1);
    const DeviceNeighborTable<Acc> table = build_neighbor_table<Acc>(adjacency, false, stream);
    const at::Tensor eps_acc = accumulate_eps<Acc>(eps);
    graph_conv_forward_kernel<scalar_t, Acc><<<config.grid(), kThreads, config.shared_bytes, stream>>>(
        y.data_ptr<scalar_t>(), in.x.data_ptr<scalar_t>(), mask_data(in.mask),
        in.token.data_ptr<scalar_t>(), table.view(), eps_acc.data_ptr<Acc>(), config);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const std::optional<at::Tensor>& mask_in,
    const at::Tensor& token_in, const at::Tensor& adjacency, const at::Tensor& eps,
    std::array<bool, 3> output_mask) {
  constexpr const char* kOp = "masked_graph_conv_backward";
  check_same_shape(kOp, "grad_output", grad_y_in, "x", x_in);
  check_device(kOp, "grad_output", grad_y_in, x_in.device());
  const Inputs in(kOp, x_in, mask_in, token_in, adjacency, eps);
  const auto [need_x, need_token, need_eps] = output_mask;
  at::Tensor grad_x = new_output(in.x, need_x);
  at::Tensor grad_token = new_output(in.token, need_token);
  at::Tensor grad_eps = new_output(eps, need_eps);
  if (!need_x && !need_token && !need_eps) return {grad_x, grad_token, grad_eps};
  if (in.x.numel() == 0) {  // empty sums
    grad_token.zero_();
    grad_eps.zero_();
    return {grad_x, grad_token, grad_eps};
  }
  const at::Tensor grad_y = grad_y_in.contiguous().to(in.x.scalar_type());
  const int64_t channels = in.x.size(2);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;
  dim3 grid;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "masked_graph_conv_backward_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const TileConfig config = tile_config<scalar_t, Acc>(
        in.x.size(0), static_cast<int32_t>(in.x.size(1)), channels, /*staged=*/need_eps ? 2 : 1);
    const DeviceNeighborTable<Acc> reversed = build_neighbor_table<Acc>(adjacency, true, stream);
    const at::Tensor eps_acc = accumulate_eps<Acc>(eps);
    grid = config.grid();
    partials = at::empty({(channels + grid.y) * grid.x}, in.x.options().dtype(at::kDouble));
    const auto kernel = need_eps ? graph_conv_backward_kernel<scalar_t, Acc, true>
                                 : graph_conv_backward_kernel<scalar_t, Acc, false>;
    kernel<<<grid, kThreads, config.shared_bytes, stream>>>(
        need_x ? grad_x.data_ptr<scalar_t>() : nullptr, partials.data_ptr<double>(),
        grad_y.data_ptr<scalar_t>(), in.x.data_ptr<scalar_t>(), mask_data(in.mask),
        in.token.data_ptr<scalar_t>(), reversed.view(), eps_acc.data_ptr<Acc>(), config);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (need_token) {
      sum_partials_kernel<scalar_t><<<static_cast<unsigned>(channels), kThreads, 0, stream>>>(
          partials.data_ptr<double>(), grid.x, grad_token.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (need_eps) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, eps.scalar_type(), "masked_graph_conv_eps_cuda", [&] {
      sum_partials_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
          partials.data_ptr<double>() + channels * grid.x, int64_t(grid.y) * grid.x,
          grad_eps.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_x, grad_token, grad_eps};
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CUDA, m) {
  m.impl("masked_graph_conv", &forward_cuda);
  m.impl("masked_graph_conv_backward", &backward_cuda);
}

}  // namespace skelmae
