// Scans over packed segments (nerfacc's inclusive_sum / exclusive_sum / inclusive_prod /
// exclusive_prod): the per-segment maths shared by the CPU and CUDA kernels.
//
// Semantics (pyengine/reference/segment_scan.py is the specification). Segment r owns the
// elements [start_r, start_r + count_r), packed_info[r] = (start_r, count_r), clamped into [0, S]
// so that a malformed packed_info can never make a kernel touch memory out of bounds. Within a
// segment, in order:
//   inclusive sum  y_i = sum_{j <= i} x_j      exclusive sum  y_i = sum_{j < i} x_j  (y_first = 0)
//   inclusive prod y_i = prod_{j <= i} x_j     exclusive prod y_i = prod_{j < i} x_j (y_first = 1)
// Elements no segment covers are not touched: the host initialises them (0 for sums, 1 for
// products, and a zero gradient).
//
// Backward, with upstream gradient g, by reverse scans that never divide (exact with zeros):
//   sums:  dx_j = sum_{i >= j} g_i (inclusive) or sum_{i > j} g_i (exclusive)
//   prods: dx_j = E_j U_j with E_j = prod_{k < j} x_k (the exclusive product) and
//          inclusive: U_j = g_j + x_{j+1} U_{j+1},            U_last = g_last
//          exclusive: U_j = g_{j+1} + x_{j+1} U_{j+1},        U_last = 0
// (U_j is the sum over i of g_i times the product of the x's strictly between j and i's end.)
// The backward walks the segment twice: forward for E (kept in the output gradient), then in
// reverse for U.
//
// Work split: one segment per thread (CUDA) or per OpenMP iteration (CPU); the thread owns the
// segment's elements, so nothing needs atomics. Memory layout: x, y, g, dx [S] contiguous,
// packed_info [R, 2] int64.
#pragma once

#include <cstdint>
#include <type_traits>

#include "pyengine/common.h"

namespace pe {

// Elements [begin, end) of segment r, clamped into [0, S].
PE_HD void segment_range(const int64_t* packed_info, int64_t r, int64_t S, int64_t& begin, int64_t& end) {
  int64_t b = packed_info[2 * r], n = packed_info[2 * r + 1];
  b = b < 0 ? 0 : (b > S ? S : b);
  n = n < 0 ? 0 : n;
  begin = b;
  end = n > S - b ? S : b + n;
}

template <typename T, bool PROD, bool EXCLUSIVE>
PE_HD void segment_scan_fwd(const int64_t* packed_info, const T* x, T* y, int64_t r, int64_t S) {
  int64_t b, e;
  segment_range(packed_info, r, S, b, e);
  T run = PROD ? T(1) : T(0);
  for (int64_t i = b; i < e; ++i) {
    const T xi = x[i];
    if (EXCLUSIVE) y[i] = run;
    run = PROD ? run * xi : run + xi;
    if (!EXCLUSIVE) y[i] = run;
  }
}

template <typename T, bool PROD, bool EXCLUSIVE>
PE_HD void segment_scan_bwd(const int64_t* packed_info, const T* x, const T* g, T* dx, int64_t r, int64_t S) {
  int64_t b, e;
  segment_range(packed_info, r, S, b, e);
  if (b >= e) return;
  if (PROD) {  // dx <- E, the exclusive product
    T run = T(1);
    for (int64_t i = b; i < e; ++i) {
      dx[i] = run;
      run *= x[i];
    }
  }
  // reverse: acc is U_j (products) or the suffix sum (sums) for the current j
  T acc = T(0);
  for (int64_t j = e - 1; j >= b; --j) {
    if (EXCLUSIVE) {
      // U_j = g_{j+1} + x_{j+1} U_{j+1} (products); sum_{i > j} g_i (sums)
      if (j + 1 < e) acc = PROD ? g[j + 1] + x[j + 1] * acc : acc + g[j + 1];
    } else {
      // U_j = g_j + x_{j+1} U_{j+1} (products); sum_{i >= j} g_i (sums)
      acc = PROD ? g[j] + (j + 1 < e ? x[j + 1] * acc : T(0)) : acc + g[j];
    }
    dx[j] = PROD ? dx[j] * acc : acc;
  }
}

// Calls fn(PROD, EXCLUSIVE) with std::integral_constant<bool> tags for the runtime flags.
template <typename Fn>
void dispatch_segment_scan(bool prod, bool exclusive, Fn&& fn) {
  using T_ = std::true_type;
  using F_ = std::false_type;
  if (prod) {
    if (exclusive) fn(T_(), T_()); else fn(T_(), F_());
  } else {
    if (exclusive) fn(F_(), T_()); else fn(F_(), F_());
  }
}

namespace cpu {
// x, y [S]; packed_info [R, 2]. y must hold the identity (0 / 1) where no segment covers it.
template <typename T>
void segment_scan_fwd(int64_t R, int64_t S, bool prod, bool exclusive, const int64_t* packed_info, const T* x, T* y);
// dx [S] zero where no segment covers it.
template <typename T>
void segment_scan_bwd(int64_t R, int64_t S, bool prod, bool exclusive, const int64_t* packed_info, const T* x,
                      const T* g, T* dx);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
namespace cuda {
// The CUDA launchers: the same arguments plus the stream; 0 or the cudaError_t of the launch.
template <typename T>
int segment_scan_fwd(int64_t R, int64_t S, bool prod, bool exclusive, const int64_t* packed_info, const T* x, T* y,
                     cudaStream_t stream);
template <typename T>
int segment_scan_bwd(int64_t R, int64_t S, bool prod, bool exclusive, const int64_t* packed_info, const T* x,
                     const T* g, T* dx, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
