// hash_encode host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

namespace pe {
namespace host {

// x [N, D], params [n_entries * F] -> [N, L * F] in params' dtype.
torch::Tensor hash_encode_fwd(const torch::Tensor& x, const torch::Tensor& params,
                              std::vector<int64_t> offsets, std::vector<double> scales,
                              std::vector<int64_t> resolutions, int64_t hashed_mask, int64_t F,
                              int64_t interp);
// -> (grad_params | undefined, grad_x | undefined)
std::tuple<torch::Tensor, torch::Tensor> hash_encode_bwd(
    const torch::Tensor& grad_out, const torch::Tensor& x, const torch::Tensor& params,
    std::vector<int64_t> offsets, std::vector<double> scales, std::vector<int64_t> resolutions,
    int64_t hashed_mask, int64_t F, int64_t interp, bool need_params, bool need_x);
// -> (d_grad_out | undefined, d_x | undefined, d_params | undefined)
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> hash_encode_bwd_bwd(
    const torch::Tensor& gg_x, const torch::Tensor& grad_out, const torch::Tensor& x,
    const torch::Tensor& params, std::vector<int64_t> offsets, std::vector<double> scales,
    std::vector<int64_t> resolutions, int64_t hashed_mask, int64_t F, int64_t interp,
    bool need_grad_out, bool need_x, bool need_params);

}  // namespace host
}  // namespace pe
