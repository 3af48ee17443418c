// hash_encode host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace pe {
namespace host {
using at::Tensor;

// x [N, D], params [n_entries * F] and the grid layout -> [N, L * F] in params' dtype.
Tensor hash_encode_fwd(const Tensor& x, const Tensor& params, std::vector<int64_t> offsets,
                       std::vector<double> scales, std::vector<int64_t> resolutions,
                       int64_t hashed_mask, int64_t F, int64_t interp);
// -> (grad_params | undefined, grad_x | undefined)
std::tuple<Tensor, Tensor> hash_encode_bwd(
    const Tensor& grad_out, const Tensor& x, const Tensor& params, std::vector<int64_t> offsets,
    std::vector<double> scales, std::vector<int64_t> resolutions, int64_t hashed_mask, int64_t F,
    int64_t interp, bool need_params, bool need_x);
// -> (d_grad_out | undefined, d_x | undefined, d_params | undefined)
std::tuple<Tensor, Tensor, Tensor> hash_encode_bwd_bwd(
    const Tensor& gg_x, const Tensor& grad_out, const Tensor& x, const Tensor& params,
    std::vector<int64_t> offsets, std::vector<double> scales, std::vector<int64_t> resolutions,
    int64_t hashed_mask, int64_t F, int64_t interp, bool need_grad_out, bool need_x,
    bool need_params);

}  // namespace host
}  // namespace pe
