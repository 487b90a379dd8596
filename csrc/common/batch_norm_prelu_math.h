// Per-element arithmetic of BatchNorm (over rows, per channel) followed by PReLU, shared by the
// CPU kernel and any GPU kernel.
//
// Forward, for channel c with mean m, inverse std s (batch statistics when training, running
// statistics in eval), scale gamma, shift beta, PReLU slope w:
//   x^ = (x - m) s,  a = gamma x^ + beta,  y = a if a > 0 else w a
// Backward, with g = dy (a > 0 ? 1 : w):
//   dbeta = sum_r g,  dgamma = sum_r g x^,  dw = sum_{r, c} dy min(a, 0)
//   dx = gamma s (g - dbeta / R - x^ dgamma / R)   (training: the statistics depend on x)
//   dx = gamma s g                                 (eval: they do not)
#pragma once

#include "host_device.h"

namespace skelmae {

template <typename Acc>
struct BatchNormPreluTerms {
  Acc normalized;  // x^
  Acc pre_activation;  // a
};

template <typename Acc>
SKELMAE_HD BatchNormPreluTerms<Acc> batch_norm_terms(Acc x, Acc mean, Acc invstd, Acc gamma, Acc beta) {
  const Acc normalized = (x - mean) * invstd;
  return {normalized, gamma * normalized + beta};
}

template <typename Acc>
SKELMAE_HD Acc prelu(Acc a, Acc slope) {
  return a > Acc(0) ? a : slope * a;
}

// d(loss)/da from dy: the PReLU's derivative.
template <typename Acc>
SKELMAE_HD Acc prelu_input_grad(Acc a, Acc slope, Acc dy) {
  return a > Acc(0) ? dy : slope * dy;
}

// d(loss)/dw contribution of one element.
template <typename Acc>
SKELMAE_HD Acc prelu_slope_grad(Acc a, Acc dy) {
  return a > Acc(0) ? Acc(0) : a * dy;
}

// dx of one element; in eval mode pass sum_g = sum_g_normalized = 0.
template <typename Acc>
SKELMAE_HD Acc batch_norm_input_grad(Acc g, Acc normalized, Acc gamma, Acc invstd, Acc mean_g,
                                     Acc mean_g_normalized) {
  return gamma * invstd * (g - mean_g - normalized * mean_g_normalized);
}

}  // namespace skelmae
