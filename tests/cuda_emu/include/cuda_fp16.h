// Emulated __half (tests/cuda_emu): 2 bytes, IEEE binary16 with round-to-nearest-even, like the
// device type, so tensors of torch.float16 can be read in place.
#pragma once
#include "cuda_runtime.h"

struct __half {
  _Float16 v;
};
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
