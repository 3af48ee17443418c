// texture host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pe {
namespace host {
using at::Tensor;

// tex [Bt, Ht, Wt, C] (Bt = 1 or B), uv [B, h, w, 2] of tex's dtype (float32 / float64);
// filter_mode 0 nearest / 1 linear, boundary_mode 0 wrap / 1 clamp / 2 zero -> [B, h, w, C].
Tensor texture_fwd(const Tensor& tex, const Tensor& uv, int64_t filter_mode, int64_t boundary_mode);
// grad of the output [B, h, w, C] and the forward's inputs -> (grad_tex | undefined, grad_uv | undefined).
std::tuple<Tensor, Tensor> texture_bwd(const Tensor& grad_out, const Tensor& tex, const Tensor& uv,
                                       int64_t filter_mode, int64_t boundary_mode, bool need_tex, bool need_uv);

}  // namespace host
}  // namespace pe
