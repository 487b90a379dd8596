// Launch shape and deterministic reductions shared by the CUDA kernels:
// fixed shuffle trees and fixed-order sums, never atomics, so every result is bitwise
// reproducible on a given GPU.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "../common/host_device.h"
#include "../common/output_buffers.h"

namespace skelmae {

// Threads of every block. 256 lets 8 blocks share an SM (2048 threads) and keeps the
// per-block reductions to 8 warps.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Grids stop growing here and loop over the rest of the work: enough blocks to fill an H100
// (132 SMs x 8) about twice, and a count of per-block partials that does not depend on the GPU.
constexpr int64_t kMaxBlocks = 2048;

// Sum over each aligned group of kWidth lanes (a butterfly: every lane of the group ends with
// the same bits). Every lane of the warp must call it.
template <int kWidth, typename Acc>
__device__ __forceinline__ Acc group_sum(Acc value) {
  for (int offset = kWidth / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset, kWidth);
  }
  return value;
}

// Sum of one value per thread over the block, the same on every thread: warp butterflies, then
// the warp sums in order (lane_sum, the CPU kernels' lane reduction). warp_sums is __shared__
// [kWarps]. Every thread of the block must call it.
__device__ __forceinline__ double block_sum(double value, double* warp_sums) {
  value = group_sum<32>(value);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  const double total = lane_sum<kWarps>(warp_sums);
  __syncthreads();  // warp_sums may be written again
  return total;
}

// Sum of values[0 .. n) by the block: thread t adds t, t + kThreads, ..., then block_sum.
__device__ __forceinline__ double block_sum_of(const double* values, int64_t n,
                                               double* warp_sums) {
  double partial = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) partial += values[i];
  return block_sum(partial, warp_sums);
}

}  // namespace skelmae
