// Launch shape of the element-wise CUDA kernels of the point-voxel ops (included by .cu files only): 256
// threads a block, a grid capped at 2^20 blocks, and PE_GRID_LOOP, a grid-stride loop over an int64
// range, so that any size fits the capped grid and many blocks share a batch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pe {
namespace cuda {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

inline unsigned blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

}  // namespace cuda
}  // namespace pe

#define PE_GRID_LOOP(i, n)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)
