// CUDA kernels of skelmae_ext::cosine_reconstruction_loss: loss and, for the inputs that need
// it, the gradient of the loss (for grad_output = 1) in one pass over the rows.
//
//   l_r  = max(1 - <p_r, t_r> / (max(|p_r|, 1e-12) * max(|t_r|, 1e-12)), 0) ^ beta
//   mean = sum_r mask_r * l_r / max(sum_r mask_r, 1);  sum = sum_r mask_r * l_r;
//   none = mask_r * l_r
//   dl_r/dp_r = g * (t / (np * nt) - [|p| >= eps] * c * p / np^2),  g = -beta (1 - c)^(beta - 1)
//   where 1 - c > 0, else 0 (NaN passes through every clamp: common/cosine_reconstruction_loss_math.h)
//   (and symmetrically for t_r), scaled by the row weight of the reduction.
//
// The per-row arithmetic is common/cosine_reconstruction_loss_math.h, the code the CPU kernel runs (one
// channel per call here). A group of lanes of a warp takes a row: the lanes stride over the
// channels (coalesced loads), a shuffle butterfly combines the three row sums, then the same
// lanes write the gradient. The reduced loss is summed in two stages (per-block partials in
// double, then one block in a fixed order: no atomics, bitwise reproducible); the count of
// "mean" is reduced on the device, so nothing waits for the host.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <type_traits>

#include "../common/checks.h"
#include "../common/cosine_reconstruction_loss_math.h"
#include "kernel_utils.cuh"

namespace skelmae {
namespace {

// Lanes per row: about two channels per lane, from 4 (narrow rows share a warp, so a load
// instruction still covers several whole rows) to 32 (wider rows loop over their channels).
int lanes_per_row(int64_t channels) {
  return channels <= 8 ? 4 : channels <= 16 ? 8 : channels <= 32 ? 16 : 32;
}

// Calls launch(std::integral_constant<int, lanes>, blocks) with the lanes per row for
// `channels` and the grid of a for_each_row loop over `rows`.
template <typename Launch>
void launch_rows(int64_t rows, int64_t channels, Launch&& launch) {
  const int lanes = lanes_per_row(channels);
  const int64_t blocks = std::min(ceil_div(rows, kThreads / lanes), kMaxBlocks);
  switch (lanes) {
    case 4: return launch(std::integral_constant<int, 4>{}, blocks);
    case 8: return launch(std::integral_constant<int, 8>{}, blocks);
    case 16: return launch(std::integral_constant<int, 16>{}, blocks);
    default: return launch(std::integral_constant<int, 32>{}, blocks);
  }
}

// The threads of a block form groups of kLanes lanes, one row per group: row
// blockIdx.x * (kThreads / kLanes) + group, then a grid's worth further, and so on. Calls
// fn(row, lane, active) with active = row < rows; every thread makes the same number of calls,
// so fn may use warp shuffles.
template <int kLanes, typename Fn>
__device__ __forceinline__ void for_each_row(int64_t rows, Fn&& fn) {
  constexpr int64_t kRowsPerBlock = kThreads / kLanes;
  const int lane = threadIdx.x % kLanes;
  const int64_t group = threadIdx.x / kLanes;
  for (int64_t first = blockIdx.x * kRowsPerBlock; first < rows;
       first += int64_t(gridDim.x) * kRowsPerBlock) {
    fn(first + group, lane, first + group < rows);
  }
}

// Row weight of the reduction; `counted` (rows with mask set) is read on the device, null when
// every row counts.
template <typename Acc>
__device__ __forceinline__ Acc row_weight(bool mean, const int64_t* counted, int64_t rows) {
  return counted_row_weight<Acc>(mean, counted != nullptr ? *counted : rows);
}

// Loss of every row: into loss_rows ("none") or summed into partials[blockIdx.x] ("mean",
// "sum"); weight * gradient into grad_pred / grad_target where not null.
template <int kLanes, typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    cosine_loss_kernel(const T* __restrict__ pred, const T* __restrict__ target,
                       const bool* __restrict__ mask, int64_t rows, int64_t channels, Acc beta,
                       bool mean, const int64_t* counted, T* __restrict__ loss_rows,
                       double* __restrict__ partials, T* __restrict__ grad_pred,
                       T* __restrict__ grad_target) {
  __shared__ double warp_sums[kWarps];
  const Acc weight = row_weight<Acc>(mean, counted, rows);
  double loss_sum = 0.0;  // lane 0 of each group: its rows' losses, in row order
  for_each_row<kLanes>(rows, [&](int64_t r, int lane, bool active) {
    const int64_t offset = r * channels;
    Acc dot = 0, pred_sq = 0, target_sq = 0;
#pragma unroll 4  // several loads in flight per lane
    for (int64_t c = lane; active && c < channels; c += kLanes) {
      accumulate_row_products_tile<1>(&dot, &pred_sq, &target_sq, pred + offset + c,
                                      target + offset + c);
    }
    dot = group_sum<kLanes>(dot);
    pred_sq = group_sum<kLanes>(pred_sq);
    target_sq = group_sum<kLanes>(target_sq);
    if (!active) return;
    const CosineRowTerms<Acc> terms = cosine_row_terms(dot, pred_sq, target_sq, beta);
    // Every row is computed; rows with mask false get weight 0 (gradient 0 * derivative, as
    // the reference path) and add 0 to the loss.
    const bool counted_row = mask == nullptr || mask[r];
    if (grad_pred != nullptr || grad_target != nullptr) {
#pragma unroll 4
      for (int64_t c = lane; c < channels; c += kLanes) {
        write_row_gradient_tile<1>(grad_pred ? grad_pred + offset + c : nullptr,
                                   grad_target ? grad_target + offset + c : nullptr,
                                   pred + offset + c, target + offset + c, terms,
                                   counted_row ? weight : Acc(0));
      }
    }
    const Acc row_loss = counted_row ? terms.loss : Acc(0);
    if (lane == 0) {
      if (loss_rows != nullptr) loss_rows[r] = static_cast<T>(row_loss);
      loss_sum += row_loss;
    }
  });
  if (partials != nullptr) {
    const double total = block_sum(loss_sum, warp_sums);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
  }
}

// Second stage of "mean" / "sum": loss = (sum of the block partials, in order) * row weight.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    finish_loss_kernel(const double* __restrict__ partials, int64_t blocks, bool mean,
                       const int64_t* counted, int64_t rows, T* __restrict__ loss) {
  __shared__ double warp_sums[kWarps];
  const double total = block_sum_of(partials, blocks, warp_sums);
  if (threadIdx.x == 0) {
    loss[0] = static_cast<T>(total * static_cast<double>(row_weight<Acc>(mean, counted, rows)));
  }
}

// The chain rule through the loss, both saved gradients in one pass (a null output skips one):
// out[r, c] = scale[per_row ? r : 0] * gradient[r, c].
template <int kLanes, typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    scale_gradients_kernel(const T* __restrict__ scale, bool per_row,
                           const T* __restrict__ grad_pred, const T* __restrict__ grad_target,
                           int64_t rows, int64_t channels, T* __restrict__ out_pred,
                           T* __restrict__ out_target) {
  for_each_row<kLanes>(rows, [&](int64_t r, int lane, bool active) {
    if (!active) return;
    const Acc factor = static_cast<Acc>(scale[per_row ? r : 0]);
    const int64_t offset = r * channels;
#pragma unroll 4
    for (int64_t c = offset + lane; c < offset + channels; c += kLanes) {
      if (out_pred != nullptr) {
        out_pred[c] = static_cast<T>(factor * static_cast<Acc>(grad_pred[c]));
      }
      if (out_target != nullptr) {
        out_target[c] = static_cast<T>(factor * static_cast<Acc>(grad_target[c]));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(
    const at::Tensor& pred_in, const at::Tensor& target_in, const std::optional<at::Tensor>& mask_in,
    double beta, c10::string_view reduction_name, std::array<bool, 2> output_mask) {
  constexpr const char* kOp = "cosine_reconstruction_loss";
  check_cosine_reconstruction_loss_args(pred_in, target_in, mask_in, beta);
  check_device(kOp, "target", target_in, pred_in.device());
  if (mask_in.has_value()) check_device(kOp, "mask", *mask_in, pred_in.device());
  const Reduction reduction = parse_reduction(reduction_name);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const std::optional<at::Tensor> mask =
      mask_in.has_value() ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const int64_t rows = pred.size(0), channels = pred.size(1);
  const bool mean = reduction == Reduction::kMean;
  // The "mean" count, reduced on the device; the kernels read it there.
  const std::optional<at::Tensor> counted =
      mean && mask.has_value() ? std::optional<at::Tensor>(mask->sum(at::kLong)) : std::nullopt;

  at::Tensor loss = reduction == Reduction::kNone ? pred.new_empty({rows}) : pred.new_empty({});
  at::Tensor grad_pred = new_output(pred, output_mask[0]);
  at::Tensor grad_target = new_output(target, output_mask[1]);
  if (rows == 0) {
    if (reduction != Reduction::kNone) loss.zero_();
    return {loss, grad_pred, grad_target};
  }

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "cosine_reconstruction_loss_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const int64_t* counted_data = counted.has_value() ? counted->data_ptr<int64_t>() : nullptr;
    launch_rows(rows, channels, [&](auto lanes, int64_t blocks) {
      const at::Tensor partials = reduction == Reduction::kNone
                                      ? at::Tensor()
                                      : at::empty({blocks}, pred.options().dtype(at::kDouble));
      cosine_loss_kernel<decltype(lanes)::value, scalar_t, Acc><<<blocks, kThreads, 0, stream>>>(
          pred.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(),
          mask.has_value() ? mask->data_ptr<bool>() : nullptr, rows, channels,
          static_cast<Acc>(beta), mean, counted_data,
          reduction == Reduction::kNone ? loss.data_ptr<scalar_t>() : nullptr,
          partials.defined() ? partials.data_ptr<double>() : nullptr,
          output_mask[0] ? grad_pred.data_ptr<scalar_t>() : nullptr,
          output_mask[1] ? grad_target.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (partials.defined()) {
        finish_loss_kernel<scalar_t, Acc><<<1, kThreads, 0, stream>>>(
            partials.data_ptr<double>(), blocks, mean, counted_data, rows,
            loss.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return {loss, grad_pred, grad_target};
}

// The saved gradients scaled by grad_output, read on the device (0-d, or one value per row).
std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& grad_pred_in,
                                                 const at::Tensor& grad_target_in, std::array<bool, 2> output_mask) {
  constexpr const char* kOp = "cosine_reconstruction_loss_backward";
  const auto [need_pred, need_target] = output_mask;
  at::Tensor out_pred = new_output(grad_pred_in, need_pred);
  at::Tensor out_target = new_output(grad_target_in, need_target);
  if (!need_pred && !need_target) return {out_pred, out_target};
  const at::Tensor& like = need_pred ? grad_pred_in : grad_target_in;
  const bool per_row = check_cosine_reconstruction_loss_backward_args(grad_output, like);
  if (need_pred && need_target) check_same_shape(kOp, "grad_target", grad_target_in, "grad_pred", grad_pred_in);
  check_device(kOp, "grad_output", grad_output, like.device());
  if (need_pred && need_target) check_device(kOp, "grad_target", grad_target_in, like.device());
  const c10::cuda::CUDAGuard guard(like.device());
  const at::Tensor grad_pred = need_pred ? grad_pred_in.contiguous() : grad_pred_in;
  const at::Tensor grad_target = need_target ? grad_target_in.contiguous() : grad_target_in;
  const at::Tensor scale = grad_output.contiguous().to(like.scalar_type());
  const int64_t rows = like.size(0), channels = like.size(1);
  if (rows == 0) return {out_pred, out_target};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "cosine_reconstruction_loss_backward_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const auto data = [](const at::Tensor& t, bool needed) {
      return needed ? t.data_ptr<scalar_t>() : nullptr;
    };
    launch_rows(rows, channels, [&](auto lanes, int64_t blocks) {
      scale_gradients_kernel<decltype(lanes)::value, scalar_t, Acc><<<blocks, kThreads, 0, stream>>>(
          scale.data_ptr<scalar_t>(), per_row, data(grad_pred, need_pred),
          data(grad_target, need_target), rows, channels, data(out_pred, need_pred),
          data(out_target, need_target));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out_pred, out_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CUDA, m) {
  m.impl("cosine_reconstruction_loss", &forward_cuda);
  m.impl("cosine_reconstruction_loss_backward", &backward_cuda);
}

}  // namespace skelmae
