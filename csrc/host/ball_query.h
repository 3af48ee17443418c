// ball_query host function, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

namespace pe {
namespace host {
using at::Tensor;

// centers_coords [B, 3, M], points_coords [B, 3, N] (one dtype, float32 / float64), radius,
// num_neighbors K >= 1 -> [B, M, K] int32 neighbour indices.
Tensor ball_query(const Tensor& centers_coords, const Tensor& points_coords, double radius, int64_t num_neighbors);

}  // namespace host
}  // namespace pe
