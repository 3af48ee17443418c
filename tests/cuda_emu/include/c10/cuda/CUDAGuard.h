// Emulation stand-in (tests/cuda_emu): no devices to switch between.
#pragma once
#include <c10/core/Device.h>

#include "cuda_runtime.h"

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(const c10::Device&) {}
};
}  // namespace cuda
}  // namespace c10
