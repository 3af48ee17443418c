// nearest_neighbor_interpolate host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pe {
namespace host {
using at::Tensor;

// points_coords [B, 3, N], centers_coords [B, 3, M], centers_features [B, C, M], one dtype
// (float32 / float64) -> (out [B, C, N], indices [B, 3, N] int32, weights [B, 3, N]).
std::tuple<Tensor, Tensor, Tensor> nearest_neighbor_interpolate_fwd(const Tensor& points_coords,
                                                                    const Tensor& centers_coords,
                                                                    const Tensor& centers_features,
                                                                    bool deterministic);

// Upstream gradients of the three outputs, the forward's inputs, its indices / weights outputs
// -> grad_centers_features [B, C, M] | undefined. deterministic: the sorted-segment sums on CUDA.
Tensor nearest_neighbor_interpolate_bwd(const Tensor& g_out, const Tensor& g_indices, const Tensor& g_weights,
                                        const Tensor& points_coords, const Tensor& centers_coords,
                                        const Tensor& centers_features, const Tensor& indices, const Tensor& weights,
                                        bool deterministic, bool need_centers_features);

}  // namespace host
}  // namespace pe
