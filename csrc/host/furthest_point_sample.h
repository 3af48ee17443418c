// furthest_point_sample host function, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

namespace pe {
namespace host {
using at::Tensor;

// coords [B, 3, N] float32 / float64, 0 <= num_samples <= N -> idx [B, num_samples] int32
// (sample 0 is point 0).
Tensor furthest_point_sample(const Tensor& coords, int64_t num_samples);

}  // namespace host
}  // namespace pe
