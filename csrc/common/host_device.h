// Portability macros and scalar helpers for the math shared by the CPU and CUDA kernels.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SKELMAE_HD __host__ __device__ __forceinline__
#else
#define SKELMAE_HD inline
#endif

namespace skelmae {

// Overloads that resolve to the same libm / CUDA math function on host and device.
SKELMAE_HD float sqrt_acc(float v) { return ::sqrtf(v); }
SKELMAE_HD double sqrt_acc(double v) { return ::sqrt(v); }
SKELMAE_HD float pow_acc(float base, float exponent) { return ::powf(base, exponent); }
SKELMAE_HD double pow_acc(double base, double exponent) { return ::pow(base, exponent); }

// max(v, low) that returns a NaN v as it is, like torch.clamp_min (fmax would return low).
template <typename Acc>
SKELMAE_HD Acc clamp_min_acc(Acc v, Acc low) {
  return v < low ? low : v;
}

// Number of chunks of `per_chunk` items that cover `items` (grids, and the fixed chunks of the
// deterministic reductions).
SKELMAE_HD int64_t ceil_div(int64_t items, int64_t per_chunk) { return (items + per_chunk - 1) / per_chunk; }

// Channels processed together by one call of the tile functions: the CPU kernels use
// kCpuTile (the inner loop vectorises), a CUDA thread uses 1.
constexpr int kCpuTile = 16;

// Sum of W lane-wise partial sums, always in the same order (deterministic).
template <int W, typename Acc>
SKELMAE_HD Acc lane_sum(const Acc* lanes) {
  Acc total = Acc(0);
  for (int i = 0; i < W; ++i) total += lanes[i];
  return total;
}

}  // namespace skelmae
