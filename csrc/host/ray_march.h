// ray_aabb_intersect and ray_march host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace pe {
namespace host {
using at::Tensor;

// rays_o, rays_d [N, 3], aabbs [M, 6] (float32 or float64, one dtype)
//   -> (t_mins [N, M], t_maxs [N, M], hits [N, M] bool)
std::tuple<Tensor, Tensor, Tensor> ray_aabb_intersect(const Tensor& rays_o, const Tensor& rays_d,
                                                      const Tensor& aabbs, double near_plane,
                                                      double far_plane, double miss_value);

// rays_o, rays_d [R, 3], t_min, t_max [R], binaries [L, X, Y, Z] bool, roi_aabb [6], jitter [R]
// or None (all float32); max_steps >= 1 steps per ray at most (default pe::kMarchMaxSteps);
// capacity -1 (outputs sized by the data, one device sync) or >= 0 (S = capacity, no sync)
//   -> (packed_info [R, 2] int64, ray_indices [S] int64, t_starts [S], t_ends [S],
//       wanted [] int64: the samples before any cut)
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> ray_march(
    const Tensor& rays_o, const Tensor& rays_d, const Tensor& t_min, const Tensor& t_max,
    const Tensor& binaries, const Tensor& roi_aabb, double step_size, double cone_angle,
    const std::optional<Tensor>& jitter, int64_t max_steps, int64_t capacity);

}  // namespace host
}  // namespace pe
