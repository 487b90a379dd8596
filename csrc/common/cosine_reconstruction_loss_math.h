// Per-row arithmetic of the cosine reconstruction loss, shared by the CPU and the CUDA kernels.
//
// Forward, for one row r with p = pred[r], t = target[r] (C channels) and eps = 1e-12:
//   np = max(|p|, eps), nt = max(|t|, eps), c = <p, t> / (np * nt)
//   l  = max(1 - c, 0) ^ beta
// (max(., 0) only removes rounding below zero; it is what F.normalize + clamp_min gives.)
// Gradient, with g = dl/dc = -beta * (1 - c) ^ (beta - 1) where 1 - c > 0, else 0:
//   dl/dp = g * (t / (np * nt) - [|p| >= eps] * c * p / np^2)
//   dl/dt = g * (p / (np * nt) - [|t| >= eps] * c * t / nt^2)
// The clamps pass no gradient where they bind, exactly as torch's clamp_min: below eps for the
// norms, at 1 - c <= 0 for the distance (where g is infinite for beta < 1).
// Every max and comparison lets NaN through, as torch.clamp_min does: a row holding NaN or
// inf has a NaN loss and NaN gradients, as in the reference path.
// The kernels scale both by the row weight: mask[r] / max(sum(mask), 1) for "mean",
// mask[r] for "sum" and "none".
#pragma once

#include <cstdint>

#include "host_device.h"

namespace skelmae {

constexpr double kNormEps = 1e-12;

// Lane-wise partial sums of <p, t>, |p|^2 and |t|^2 over channels [0, W) of the given pointers.
template <int W, typename T, typename Acc>
SKELMAE_HD void accumulate_row_products_tile(Acc* dot, Acc* pred_sq, Acc* target_sq,
                                             const T* pred, const T* target) {
  for (int i = 0; i < W; ++i) {
    const Acc p = static_cast<Acc>(pred[i]);
    const Acc t = static_cast<Acc>(target[i]);
    dot[i] += p * t;
    pred_sq[i] += p * p;
    target_sq[i] += t * t;
  }
}

// base ^ exponent; the usual exponents (beta = 1, 2, 3 and beta - 1) by multiplication, since a
// libm pow call costs more than the rest of a 64-channel row.
template <typename Acc>
SKELMAE_HD Acc power(Acc base, Acc exponent) {
  if (exponent == Acc(0)) return Acc(1);
  if (exponent == Acc(1)) return base;
  if (exponent == Acc(2)) return base * base;
  if (exponent == Acc(3)) return base * base * base;
  return pow_acc(base, exponent);
}

// Weight of a row that counts: 1 / max(counted, 1) for "mean" (counted = rows with mask set),
// 1 for "sum" and "none".
template <typename Acc>
SKELMAE_HD Acc counted_row_weight(bool mean, int64_t counted) {
  return mean ? Acc(1) / static_cast<Acc>(counted > 1 ? counted : 1) : Acc(1);
}

// Loss of one row and the coefficients of its gradient:
//   dl/dp = cross * t + pred_self * p,  dl/dt = cross * p + target_self * t.
template <typename Acc>
struct CosineRowTerms {
  Acc loss;
  Acc cross;
  Acc pred_self;
  Acc target_self;
};

template <typename Acc>
SKELMAE_HD CosineRowTerms<Acc> cosine_row_terms(Acc dot, Acc pred_sq, Acc target_sq, Acc beta) {
  const Acc eps = static_cast<Acc>(kNormEps);
  const Acc pred_norm = sqrt_acc(pred_sq);
  const Acc target_norm = sqrt_acc(target_sq);
  const Acc pred_den = clamp_min_acc(pred_norm, eps);
  const Acc target_den = clamp_min_acc(target_norm, eps);
  const Acc cosine = dot / (pred_den * target_den);
  const Acc distance = clamp_min_acc(Acc(1) - cosine, Acc(0));
  const Acc dloss_dcos = distance > Acc(0) ? -beta * power(distance, beta - Acc(1)) : Acc(0);
  CosineRowTerms<Acc> terms;
  terms.loss = power(distance, beta);
  terms.cross = dloss_dcos / (pred_den * target_den);
  terms.pred_self = pred_norm < eps ? Acc(0) : -dloss_dcos * cosine / (pred_den * pred_den);
  terms.target_self = target_norm < eps ? Acc(0) : -dloss_dcos * cosine / (target_den * target_den);
  return terms;
}

// Writes weight * dl/dp and weight * dl/dt for channels [0, W); a null pointer skips that
// gradient.
template <int W, typename T, typename Acc>
SKELMAE_HD void write_row_gradient_tile(T* grad_pred, T* grad_target, const T* pred,
                                        const T* target, const CosineRowTerms<Acc>& terms,
                                        Acc weight) {
  const Acc cross = weight * terms.cross;
  if (grad_pred != nullptr) {
    const Acc self = weight * terms.pred_self;
    for (int i = 0; i < W; ++i) {
      grad_pred[i] = static_cast<T>(cross * static_cast<Acc>(target[i]) +
                                    self * static_cast<Acc>(pred[i]));
    }
  }
  if (grad_target != nullptr) {
    const Acc self = weight * terms.target_self;
    for (int i = 0; i < W; ++i) {
      grad_target[i] = static_cast<T>(cross * static_cast<Acc>(pred[i]) +
                                      self * static_cast<Acc>(target[i]));
    }
  }
}

}  // namespace skelmae
