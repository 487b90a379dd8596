// skelmae_ext::fold_weights and its backward: two Linear weights folded into one, on every device
// (CompositeExplicitAutograd: ATen ops, so the CPU and a GPU alike, one op call from Python).
//
//   F  = O I                 (plus_identity: F = O (I + 1) = O I + O)    O [out, mid], I [mid, in]
//   dO = dF I^T  (+ dF),     dI = O^T dF
//
// In float64, cast back to each input's dtype: the folded matrix multiplies every row of a batch,
// so its rounding errors do not average out, and a product that cancels loses digits in float32.
#include <torch/library.h>

#include <array>
#include <tuple>

namespace skelmae {
namespace {

void check_fold_args(const at::Tensor& outer, const at::Tensor& inner, bool plus_identity) {
  TORCH_CHECK(outer.dim() == 2 && inner.dim() == 2 && outer.size(1) == inner.size(0),
              "fold_weights: outer [out, mid] and inner [mid, in] must chain, got ", outer.sizes(), " and ",
              inner.sizes());
  TORCH_CHECK(!plus_identity || inner.size(0) == inner.size(1),
              "fold_weights: plus_identity needs a square inner, got ", inner.sizes());
}

at::Tensor fold_weights(const at::Tensor& outer, const at::Tensor& inner, bool plus_identity) {
  check_fold_args(outer, inner, plus_identity);
  const at::Tensor outer64 = outer.to(at::kDouble);
  at::Tensor product = outer64.mm(inner.to(at::kDouble));
  if (plus_identity) product.add_(outer64);
  return product.to(outer.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> fold_weights_backward(const at::Tensor& grad, const at::Tensor& outer,
                                                         const at::Tensor& inner, bool plus_identity,
                                                         std::array<bool, 2> output_mask) {
  check_fold_args(outer, inner, plus_identity);
  const at::Tensor grad64 = grad.to(at::kDouble);
  at::Tensor grad_outer = outer.new_empty({0}), grad_inner = inner.new_empty({0});
  if (output_mask[0]) {
    at::Tensor sum = grad64.mm(inner.to(at::kDouble).t());
    if (plus_identity) sum.add_(grad64);
    grad_outer = sum.to(outer.scalar_type());
  }
  if (output_mask[1]) grad_inner = outer.to(at::kDouble).t().mm(grad64).to(inner.scalar_type());
  return {grad_outer, grad_inner};
}

}  // namespace

TORCH_LIBRARY_IMPL(skelmae_ext, CompositeExplicitAutograd, m) {
  m.impl("fold_weights", &fold_weights);
  m.impl("fold_weights_backward", &fold_weights_backward);
}

}  // namespace skelmae
