// Per-graph arithmetic of the masked skeleton graph convolution, shared by the CPU and the CUDA
// kernels so that the CPU tests exercise the arithmetic the GPU runs.
//
// Forward, for one graph g with joints v, u and channels c:
//   x~[v, c] = token[c] if mask[v] else x[v, c]
//   y[v, c]  = (1 + eps) * x~[v, c] + sum_u A[v, u] * x~[u, c]
// Backward, with S = A + (1 + eps) I:
//   agg[v, c]  = sum_u S[u, v] * dy[u, c]          (aggregation along reversed edges)
//   dx[v, c]   = 0 if mask[v] else agg[v, c]
//   dtoken[c] += sum over masked v of agg[v, c]
//   deps      += sum_{v, c} x~[v, c] * dy[v, c]
#pragma once

#include <cstdint>

#include "host_device.h"

namespace skelmae {

// Compressed rows of a dense V x V adjacency: the neighbours of joint v are
// index[offset[v] .. offset[v + 1]) with weights weight[...].
template <typename Acc>
struct NeighborTable {
  const int32_t* offset;  // [V + 1]
  const int32_t* index;   // [nnz], nnz <= V * V
  const Acc* weight;      // [nnz]
};

// Writes the neighbours of joint v (index, weight) in increasing u and returns their count;
// with index == nullptr it only counts. transpose = false lists the u with A[v, u] != 0 (the
// forward gathers x~[u] into y[v]); transpose = true lists the u with A[u, v] != 0 (the
// backward gathers dy[u] into dx[v]). Rows are independent: the CUDA build fills them in
// parallel.
template <typename Acc>
SKELMAE_HD int32_t fill_neighbor_row(const Acc* __restrict__ adjacency, int32_t num_joints,
                                     bool transpose, int32_t v, int32_t* __restrict__ index,
                                     Acc* __restrict__ weight) {
  int32_t count = 0;
  for (int32_t u = 0; u < num_joints; ++u) {
    const Acc w = transpose ? adjacency[u * num_joints + v] : adjacency[v * num_joints + u];
    if (w != Acc(0)) {
      if (index != nullptr) {
        index[count] = u;
        weight[count] = w;
      }
      ++count;
    }
  }
  return count;
}

// Fills a table from the row-major adjacency, row after row. Returns the number of entries.
template <typename Acc>
SKELMAE_HD int32_t fill_neighbor_table(const Acc* adjacency, int32_t num_joints, bool transpose,
                                       int32_t* offset, int32_t* index, Acc* weight) {
  int32_t nnz = 0;
  for (int32_t v = 0; v < num_joints; ++v) {
    offset[v] = nnz;
    nnz += fill_neighbor_row(adjacency, num_joints, transpose, v, index + nnz, weight + nnz);
  }
  offset[num_joints] = nnz;
  return nnz;
}

// The row of x~ for joint u of one graph whose rows are `stride` elements apart: the mask
// token where the joint is masked. graph_mask == nullptr means nothing is masked.
template <typename T>
SKELMAE_HD const T* substituted_row(const T* graph, const bool* graph_mask, const T* token,
                                    int32_t u, int64_t stride) {
  return (graph_mask != nullptr && graph_mask[u]) ? token : graph + u * stride;
}

// out[i] = self_weight * x~[v, c0 + i] + sum_k w_k * x~[n_k, c0 + i] for i < W.
template <int W, typename T, typename Acc>
SKELMAE_HD void aggregate_tile(Acc* out, const T* graph, int64_t stride, const bool* graph_mask,
                               const T* token, const NeighborTable<Acc>& table, int32_t v,
                               Acc self_weight, int64_t c0) {
  const T* self = substituted_row(graph, graph_mask, token, v, stride) + c0;
  for (int i = 0; i < W; ++i) out[i] = self_weight * static_cast<Acc>(self[i]);
  for (int32_t k = table.offset[v]; k < table.offset[v + 1]; ++k) {
    const T* source = substituted_row(graph, graph_mask, token, table.index[k], stride) + c0;
    const Acc w = table.weight[k];
    for (int i = 0; i < W; ++i) out[i] += w * static_cast<Acc>(source[i]);
  }
}

// Forward of channels [c0, c0 + W) of joint v: writes y_row[c0 .. c0 + W), y_row being joint
// v's output row. The input rows are `stride` apart: a graph of x in memory (stride C), or a
// channel tile of it staged in shared memory.
template <int W, typename T, typename Acc>
SKELMAE_HD void graph_conv_forward_tile(T* y_row, const T* graph, int64_t stride,
                                        const bool* graph_mask, const T* token,
                                        const NeighborTable<Acc>& table, int32_t v,
                                        Acc self_weight, int64_t c0) {
  Acc out[W];
  aggregate_tile<W>(out, graph, stride, graph_mask, token, table, v, self_weight, c0);
  for (int i = 0; i < W; ++i) y_row[c0 + i] = static_cast<T>(out[i]);
}

// Backward of channels [c0, c0 + W) of joint v, with `reversed` the transposed table and the
// rows of dy `grad_y_stride` apart (as the forward's input rows). x_row and grad_x_row are joint
// v's rows of x and dx. Writes dx (when grad_x_row is not null), adds the masked joint's
// aggregate to token_sum[0..W) and, when eps_sum is not null, x~ * dy to eps_sum[0..W)
// (lane-wise: no reassociation, so the summation order is fixed by the caller). Sum is the type
// of those long reductions (double: the sums run over every masked joint of a batch and cancel
// heavily).
template <int W, typename T, typename Acc, typename Sum>
SKELMAE_HD void graph_conv_backward_tile(T* grad_x_row, Sum* token_sum, Sum* eps_sum,
                                         const T* grad_y_graph, int64_t grad_y_stride,
                                         const T* x_row, const bool* graph_mask, const T* token,
                                         const NeighborTable<Acc>& reversed, int32_t v,
                                         Acc self_weight, int64_t c0) {
  Acc agg[W];
  aggregate_tile<W>(agg, grad_y_graph, grad_y_stride, static_cast<const bool*>(nullptr),
                    static_cast<const T*>(nullptr), reversed, v, self_weight, c0);
  const bool masked = graph_mask != nullptr && graph_mask[v];
  if (grad_x_row != nullptr) {
    for (int i = 0; i < W; ++i) grad_x_row[c0 + i] = masked ? T(0) : static_cast<T>(agg[i]);
  }
  if (masked) {
    for (int i = 0; i < W; ++i) token_sum[i] += static_cast<Sum>(agg[i]);
  }
  if (eps_sum != nullptr) {
    const T* x_tilde = (masked ? token : x_row) + c0;
    const T* dy = grad_y_graph + v * grad_y_stride + c0;
    for (int i = 0; i < W; ++i) {
      eps_sum[i] += static_cast<Sum>(static_cast<Acc>(x_tilde[i]) * static_cast<Acc>(dy[i]));
    }
  }
}

}  // namespace skelmae
