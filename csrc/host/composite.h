// composite host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace pe {
namespace host {

// packed_info [R, 2] int64, t_starts / t_ends / x [S], values [S, C] (C may be 0), all floating
// tensors float32 or all float64. x is sigma (alpha_mode false) or alpha (alpha_mode true).
// -> (weights [S], transmittance [S], alphas [S], accumulated [R, C], opacity [R], depth [R])
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>
composite_fwd(const torch::Tensor& packed_info, const torch::Tensor& t_starts,
              const torch::Tensor& t_ends, const torch::Tensor& x, const torch::Tensor& values,
              bool alpha_mode);

// Upstream gradients of the six outputs, the forward's inputs and its transmittance output.
// -> (grad_x [S] | undefined, grad_values [S, C] | undefined)
std::tuple<torch::Tensor, torch::Tensor> composite_bwd(
    const torch::Tensor& g_weights, const torch::Tensor& g_trans, const torch::Tensor& g_alphas,
    const torch::Tensor& g_acc, const torch::Tensor& g_opacity, const torch::Tensor& g_depth,
    const torch::Tensor& packed_info, const torch::Tensor& t_starts, const torch::Tensor& t_ends,
    const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& trans,
    bool alpha_mode, bool need_x, bool need_values);

}  // namespace host
}  // namespace pe
