// Shared by the point ops of PVCNN (furthest_point_sample, ball_query,
// nearest_neighbor_interpolate): the squared distance between two points and the bit views that
// the CUDA reductions order by.
//
// Coordinates are [3, N] per batch (x row, y row, z row). The squared distance is
//   d2 = dx * dx + dy * dy + dz * dz,   dx = a_x - b_x,
// each product and sum rounded once, left to right: the reference (PyTorch, one rounding per
// operation) computes it the same way, so the kernels pick the very same neighbours and samples,
// ties included. On the device the products go through __fmul_rn / __dmul_rn, which nvcc never
// contracts into an FMA with the following add (it would contract a plain `a * b + c`).
#pragma once

#include <cstdint>
#include <cstring>

#include "pyengine/common.h"

namespace pe {

// Squared distance between point i of a ([3, Na]) and point j of b ([3, Nb]), a minus b.
template <typename T>
PE_HD T pt_dist2(const T* a, int64_t Na, int64_t i, const T* b, int64_t Nb, int64_t j) {
  const T dx = a[i] - b[j], dy = a[Na + i] - b[Nb + j], dz = a[2 * Na + i] - b[2 * Nb + j];
  return rn_mul(dx, dx) + rn_mul(dy, dy) + rn_mul(dz, dz);
}

// The bits of a non-negative float / double as an unsigned integer of the same width: for
// non-negative values (squared distances) the integers order as the values do.
PE_HD uint32_t pt_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
#endif
}
PE_HD unsigned long long pt_bits(double v) {
#if defined(__CUDA_ARCH__)
  return static_cast<unsigned long long>(__double_as_longlong(v));
#else
  unsigned long long u;
  std::memcpy(&u, &v, sizeof u);
  return u;
#endif
}

// An index into [0, n) from a possibly out-of-range one (inputs not validated): clamped.
PE_HD int64_t pt_clamp_index(int32_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

}  // namespace pe
