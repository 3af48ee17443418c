// Emulation stand-in (tests/cuda_emu): one implicit stream.
#pragma once
#include "cuda_runtime.h"

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(int = -1) { return {}; }
}  // namespace cuda
}  // namespace c10
