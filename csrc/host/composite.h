// composite host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pe {
namespace host {
using at::Tensor;

// packed_info [R, 2] int64, t_starts / t_ends / x [S], values [S, C] (C may be 0), all floating
// tensors float32 or all float64. x is sigma (alpha_mode false) or alpha (alpha_mode true).
// -> (weights [S], transmittance [S], alphas [S], accumulated [R, C], opacity [R], depth [R])
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> composite_fwd(
    const Tensor& packed_info, const Tensor& t_starts, const Tensor& t_ends, const Tensor& x,
    const Tensor& values, bool alpha_mode);

// Upstream gradients of the six outputs, the forward's inputs and its transmittance output.
// -> (grad_x [S] | undefined, grad_values [S, C] | undefined)
std::tuple<Tensor, Tensor> composite_bwd(
    const Tensor& g_weights, const Tensor& g_trans, const Tensor& g_alphas, const Tensor& g_acc,
    const Tensor& g_opacity, const Tensor& g_depth, const Tensor& packed_info,
    const Tensor& t_starts, const Tensor& t_ends, const Tensor& x, const Tensor& values,
    const Tensor& trans, bool alpha_mode, bool need_x, bool need_values);

}  // namespace host
}  // namespace pe
