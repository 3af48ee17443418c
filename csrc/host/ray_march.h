// ray_aabb_intersect and ray_march host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <torch/extension.h>

#include <optional>
#include <tuple>

namespace pe {
namespace host {

// rays_o, rays_d [N, 3], aabbs [M, 6] (float32 or float64, one dtype)
//   -> (t_mins [N, M], t_maxs [N, M], hits [N, M] bool)
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> ray_aabb_intersect(
    const torch::Tensor& rays_o, const torch::Tensor& rays_d, const torch::Tensor& aabbs,
    double near_plane, double far_plane, double miss_value);

// rays_o, rays_d [R, 3], t_min, t_max [R], binaries [L, X, Y, Z] bool, roi_aabb [6],
// jitter [R] or None (all float32)
//   -> (packed_info [R, 2] int64, ray_indices [S] int64, t_starts [S], t_ends [S])
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> ray_march(
    const torch::Tensor& rays_o, const torch::Tensor& rays_d, const torch::Tensor& t_min,
    const torch::Tensor& t_max, const torch::Tensor& binaries, const torch::Tensor& roi_aabb,
    double step_size, double cone_angle, const std::optional<torch::Tensor>& jitter);

}  // namespace host
}  // namespace pe
