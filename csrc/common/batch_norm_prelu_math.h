// Per-element and per-channel arithmetic of BatchNorm (statistics over the rows of [R, C])
// followed by PReLU, shared by the CPU kernel and any GPU kernel.
//
// Forward, channel c, with mean m and variance v (batch statistics, or running ones in eval),
// s = 1 / sqrt(v + eps), BatchNorm weight gamma and bias beta, PReLU slope w:
//   x^ = (x - m) s,  a = gamma x^ + beta = x k + b (k = gamma s, b = beta - m k),
//   y = a if a > 0 else w a
// Backward, with g = dy if a > 0 else w dy:
//   dbeta = sum_r g,  dgamma = sum_r g x^,  dw = sum_r [a <= 0] dy a
//   dx = k (g - dbeta / R - x^ dgamma / R)   (batch statistics: they depend on x)
//   dx = k g                                 (running statistics: they do not)
#pragma once

#include "host_device.h"

namespace skelmae {

template <typename Acc>
struct ChannelAffine {  // a = x k + b
  Acc k;
  Acc b;
};

template <typename Acc>
SKELMAE_HD ChannelAffine<Acc> batch_norm_affine(Acc mean, Acc invstd, Acc gamma, Acc beta) {
  const Acc k = gamma * invstd;
  return {k, beta - mean * k};
}

// The selects below pick between two computed values (no branch on the data: the CPU loops
// vectorise, and a branch on the sign of a would mispredict half the time). NaN propagates.
template <typename Acc>
SKELMAE_HD Acc prelu(Acc a, Acc slope) {
  const Acc negative = slope * a;
  return a > Acc(0) ? a : negative;
}

// d(loss)/da from dy.
template <typename Acc>
SKELMAE_HD Acc prelu_input_grad(Acc a, Acc slope, Acc dy) {
  return dy * (a > Acc(0) ? Acc(1) : slope);
}

// One element's share of d(loss)/dw.
template <typename Acc>
SKELMAE_HD Acc prelu_slope_grad(Acc a, Acc dy) {
  return (a > Acc(0) ? Acc(0) : a) * dy;
}

// dx of one element; with running statistics pass mean_g = mean_g_normalized = 0.
template <typename Acc>
SKELMAE_HD Acc batch_norm_input_grad(Acc g, Acc normalized, Acc k, Acc mean_g, Acc mean_g_normalized) {
  return k * (g - mean_g - normalized * mean_g_normalized);
}

// Chan et al.'s merge of two (count, mean, M2) summaries: order-fixed, so deterministic.
template <typename Acc>
SKELMAE_HD void merge_moments(Acc& count, Acc& mean, Acc& m2, Acc other_count, Acc other_mean,
                              Acc other_m2) {
  const Acc total = count + other_count;
  if (total == Acc(0)) return;
  const Acc delta = other_mean - mean;
  mean += delta * other_count / total;
  m2 += other_m2 + delta * delta * count * other_count / total;
  count = total;
}

}  // namespace skelmae
