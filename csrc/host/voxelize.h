// avg_voxelize and trilinear_devoxelize host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pe {
namespace host {
using at::Tensor;

// The largest resolution whose R^3 voxel indices fit int32.
constexpr int64_t kMaxVoxelResolution = 1290;

// features [B, C, N] float32 / float64, coords [B, 3, N] int32 -> (grid [B, C, R, R, R] in
// features' dtype, idx [B, N] int32, counts [B, R^3] int32). deterministic: the sorted-segment
// sums on CUDA (the CPU kernel always is).
std::tuple<Tensor, Tensor, Tensor> avg_voxelize_fwd(const Tensor& features, const Tensor& coords,
                                                    int64_t resolution, bool deterministic);

// Upstream gradients of the three outputs, the forward's inputs and its idx / counts outputs.
// -> grad_features [B, C, N] | undefined
Tensor avg_voxelize_bwd(const Tensor& g_grid, const Tensor& g_idx, const Tensor& g_counts,
                        const Tensor& features, const Tensor& coords, const Tensor& idx,
                        const Tensor& counts, int64_t resolution, bool deterministic,
                        bool need_features);

// grid [B, C, R, R, R], coords [B, 3, N] in grid's dtype (float32 / float64) -> [B, C, N].
Tensor trilinear_devoxelize_fwd(const Tensor& grid, const Tensor& coords, bool deterministic);

// -> (grad_grid [B, C, R, R, R] | undefined, grad_coords [B, 3, N] | undefined); deterministic:
// the sorted-segment grid gradient on CUDA.
std::tuple<Tensor, Tensor> trilinear_devoxelize_bwd(const Tensor& g_out, const Tensor& grid,
                                                    const Tensor& coords, bool deterministic,
                                                    bool need_grid, bool need_coords);

}  // namespace host
}  // namespace pe
