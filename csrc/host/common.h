// Shared by the host files: where a tensor's kernels run.
#pragma once

#include <torch/extension.h>

#ifdef PE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace pe {
namespace host {

// True when the CUDA launchers should run for this tensor. Under PE_EMULATE_CUDA (tests only:
// tests/cuda_emu builds the CUDA sources for the CPU, one thread at a time) every tensor takes
// the CUDA path, so the .cu kernels run on CPU memory.
inline bool on_device(const torch::Tensor& t) {
#ifdef PE_EMULATE_CUDA
  (void)t;
  return true;
#else
  return t.is_cuda();
#endif
}

#ifdef PE_WITH_CUDA
// err: what a CUDA launcher returned (0, or a cudaError_t).
inline void check_cuda(int err, const char* op, const char* what) {
  TORCH_CHECK(err == 0, op, ": CUDA ", what, " failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
}
#endif

}  // namespace host
}  // namespace pe
