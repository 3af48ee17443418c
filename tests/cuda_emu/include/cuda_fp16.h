// Emulated __half (tests/cuda_emu): 2 bytes, IEEE binary16 with round-to-nearest-even, like the
// device type, so tensors of torch.float16 can be read in place.
#pragma once
#include <cstring>

#include "cuda_runtime.h"

struct __half {
  _Float16 v;
};
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
inline __half __ushort_as_half(unsigned short bits) {
  __half h;
  std::memcpy(&h, &bits, 2);
  return h;
}
inline unsigned short __half_as_ushort(__half h) {
  unsigned short bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

#if defined(__CUDACC__) && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700)
// The sum of two halves is exact in double, so one conversion rounds it as the device does.
inline __half atomicAdd(__half* a, __half v) {
  pe_emu::count(pe_emu::kAtomicAddHalf);
  const __half old = *a;
  a->v = static_cast<_Float16>(static_cast<double>(old.v) + static_cast<double>(v.v));
  return old;
}
#endif
