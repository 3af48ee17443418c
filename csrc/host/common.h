// Shared by the host files: where a tensor's kernels run.
#pragma once

#include <torch/extension.h>

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

}  // namespace host
}  // namespace pe
