// Emulated __nv_bfloat16 (tests/cuda_emu): the upper 16 bits of a float32, round-to-nearest-even.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { return __nv_bfloat16{bits}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

#if defined(__CUDACC__) && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
  pe_emu::count(pe_emu::kAtomicAddBf16);
  const __nv_bfloat16 old = *a;
  // Rounded once to bfloat16: the double sum goes to float rounding to odd (truncate, then set the
  // last bit when inexact), which leaves the final round-to-nearest-even to __float2bfloat16_rn.
  const double s = static_cast<double>(__bfloat162float(old)) + static_cast<double>(__bfloat162float(v));
  float f = static_cast<float>(s);
  if (static_cast<double>(f) != s && !std::isnan(s)) {
    if (std::fabs(static_cast<double>(f)) > std::fabs(s)) f = std::nextafter(f, 0.0f);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u |= 1u;
    std::memcpy(&f, &u, 4);
  }
  *a = __float2bfloat16_rn(f);
  return old;
}
#endif
