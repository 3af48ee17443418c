// rasterize and interpolate host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pe {
namespace host {
using at::Tensor;

// pos [B, V, 4] float32 / float64 clip-space positions, tri [T, 3] int64, an H x W image
// -> rast [B, H, W, 4] (u, v, z/w, triangle id + 1), zeros where nothing covers.
Tensor rasterize_fwd(const Tensor& pos, const Tensor& tri, int64_t height, int64_t width);
// Upstream gradient of rast, the forward's inputs and its rast -> grad_pos [B, V, 4] | undefined.
Tensor rasterize_bwd(const Tensor& g_rast, const Tensor& pos, const Tensor& tri, const Tensor& rast, int64_t height,
                     int64_t width, bool need_pos);

// attr [Ba, V, C] (Ba = 1: shared by every image, or B), rast [B, H, W, 4], one dtype (float32 /
// float64), tri [T, 3] int64 -> out [B, H, W, C].
Tensor interpolate_fwd(const Tensor& attr, const Tensor& rast, const Tensor& tri);
// -> (grad_attr [Ba, V, C] | undefined, grad_rast [B, H, W, 4] | undefined)
std::tuple<Tensor, Tensor> interpolate_bwd(const Tensor& g_out, const Tensor& attr, const Tensor& rast,
                                           const Tensor& tri, bool need_attr, bool need_rast);

}  // namespace host
}  // namespace pe
