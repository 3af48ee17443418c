// Point-voxel conversions (PVCNN's avg_voxelize and trilinear_devoxelize): the per-point maths
// shared by the CPU and CUDA kernels.
//
// Semantics (pyengine/reference/voxelize.py is the specification). A grid of resolution R has
// V = R^3 voxels, voxel (x, y, z) at the flat index x R^2 + y R + z; grids are [B, C, V].
//
// avg_voxelize: point n of batch b with integer coordinates (x, y, z), each clamped into
// [0, R - 1] (the Python layer rejects out-of-range ones unless told not to check), falls into
// voxel idx[b, n]; count[b, v] is the number of points in voxel v and
//   grid[b, c, v] = sum_{n: idx[b, n] = v} f[b, c, n] / count[b, v]      (0 for empty voxels),
//   dL/df[b, c, n] = dL/dgrid[b, c, idx[b, n]] / count[b, idx[b, n]].
//
// trilinear_devoxelize: point n with real coordinates (x, y, z) in voxel units, each clamped
// into [0, R - 1] (NaN reads as 0 here; the reference propagates it). Per axis lo = floor(x),
// hi = min(lo + 1, R - 1), f = x - lo; corner k (bits x y z, x the highest) is the voxel of the
// axes' lo (bit 0) or hi (bit 1) with weight w_k = wx wy wz, wx = 1 - f (lo) or f (hi):
//   out[b, c, n] = sum_k w_k grid[b, c, corner_k].
// (PVCNN takes hi = lo where f = 0; the weight is 0 there, so the values agree.) Backward:
//   dL/dgrid[b, c, corner_k] += w_k dL/dout[b, c, n],
//   dL/dx[b, n] = sum_c dL/dout[b, c, n] sum_k (dw_k / dx) grid[b, c, corner_k] for x in [0, R - 1]
// (clamp's rule: zero strictly outside), with dwx/dx = -1 (lo) or +1 (hi), likewise y and z.
//
// Reductions: avg_voxelize's sums and devoxelize's grid gradient gather several points into one
// voxel. The CPU kernels give each (b, c) row to one thread, which adds the points in their order
// (n ascending, then the corners k ascending): deterministic. The CUDA kernels either scatter with
// atomics (fast, order-dependent) or, when asked to be deterministic, reduce sorted segments: the
// host stably sorts the points' voxel keys per batch and finds each voxel's segment [start, end)
// of the sorted order, and one thread per (b, c, v) adds its segment in that order, which is the
// CPU's order too.
#pragma once

#include <cstdint>

#include "pyengine/common.h"

namespace pe {

// Voxel of point n (coords [3, N] of its batch), each coordinate clamped into [0, R - 1].
PE_HD int32_t voxel_of_point(const int32_t* coords, int64_t N, int64_t n, int R) {
  int32_t v = 0;
  for (int d = 0; d < 3; ++d) {
    int32_t c = coords[d * N + n];
    c = c < 0 ? 0 : (c > R - 1 ? R - 1 : c);
    v = v * R + c;
  }
  return v;
}

// One axis of a trilinear lookup: the two voxel coordinates, the fraction and whether the
// coordinate lies in [0, R - 1] (where its gradient passes).
template <typename T>
struct DevoxAxis {
  int32_t lo, hi;
  T f;
  bool inside;
};

template <typename T>
PE_HD DevoxAxis<T> devox_axis(T x, int R) {
  const T top = T(R - 1);
  const bool inside = x >= T(0) && x <= top;
  x = x > T(0) ? x : T(0);  // (NaN fails the comparison and becomes 0)
  x = x < top ? x : top;
  const T lo = pe_floor(x);
  const int32_t l = static_cast<int32_t>(lo);
  return {l, l + 1 < R ? l + 1 : l, x - lo, inside};
}

// The three axes of point n (coords [3, N] of its batch).
template <typename T>
PE_HD void devox_axes(const T* coords, int64_t N, int64_t n, int R, DevoxAxis<T>* a) {
  for (int d = 0; d < 3; ++d) a[d] = devox_axis(coords[d * N + n], R);
}

// Voxel and weight of corner k; with grad non-null, also dw_k / d(x, y, z) (0 on an axis whose
// coordinate lies outside [0, R - 1]).
template <typename T>
PE_HD int32_t devox_corner(const DevoxAxis<T>* a, int k, int R, T& w, T* grad = nullptr) {
  const bool hx = k & 4, hy = k & 2, hz = k & 1;
  const T wx = hx ? a[0].f : T(1) - a[0].f, wy = hy ? a[1].f : T(1) - a[1].f, wz = hz ? a[2].f : T(1) - a[2].f;
  w = wx * wy * wz;
  if (grad) {
    grad[0] = a[0].inside ? (hx ? wy * wz : -(wy * wz)) : T(0);
    grad[1] = a[1].inside ? (hy ? wx * wz : -(wx * wz)) : T(0);
    grad[2] = a[2].inside ? (hz ? wx * wy : -(wx * wy)) : T(0);
  }
  return ((hx ? a[0].hi : a[0].lo) * R + (hy ? a[1].hi : a[1].lo)) * R + (hz ? a[2].hi : a[2].lo);
}

// ---------------------------------------------------------------------------------------------
// Launchers, T = float or double: raw pointers only, no torch. B batches, C channels, N points,
// V = R^3 voxels. features / out / g_out [B, C, N], grid / g_grid [B, C, V], int coords [B, 3, N]
// int32, real coords [B, 3, N] in T, idx [B, N] and counts [B, V] int32.

namespace cpu {
// idx, and counts and grid (zeroed by the caller).
template <typename T>
void avg_voxelize_fwd(int64_t B, int64_t C, int64_t N, int R, const T* features, const int32_t* coords, T* grid,
                      int32_t* idx, int32_t* counts);
template <typename T>
void avg_voxelize_bwd(int64_t B, int64_t C, int64_t N, int R, const T* g_grid, const int32_t* idx,
                      const int32_t* counts, T* g_features);
template <typename T>
void trilinear_devoxelize_fwd(int64_t B, int64_t C, int64_t N, int R, const T* grid, const T* coords, T* out);
// g_grid (zeroed by the caller) and g_coords may each be null (not needed).
template <typename T>
void trilinear_devoxelize_bwd(int64_t B, int64_t C, int64_t N, int R, const T* g_out, const T* grid, const T* coords,
                              T* g_grid, T* g_coords);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
// Each returns 0 or the cudaError_t of a failed launch. The sorted segments (deterministic mode)
// come from the host: order [B, M] int64 the stable order of a batch's M keys, start [B, V + 1]
// int64 where voxel v's keys begin in that order (M = N for avg_voxelize, 8 N for devoxelize,
// key 8 n + k being corner k of point n).
namespace cuda {
// idx and counts (zeroed by the caller).
int avg_voxelize_index(int64_t B, int64_t N, int R, const int32_t* coords, int32_t* idx, int32_t* counts,
                       cudaStream_t stream);
// grid from idx and counts: with order / start, one thread per (b, c, v) over its segment; with
// null order, atomics into grid (zeroed by the caller) and a division pass.
template <typename T>
int avg_voxelize_fwd(int64_t B, int64_t C, int64_t N, int R, const T* features, const int32_t* idx,
                     const int32_t* counts, const int64_t* order, const int64_t* start, T* grid, cudaStream_t stream);
template <typename T>
int avg_voxelize_bwd(int64_t B, int64_t C, int64_t N, int R, const T* g_grid, const int32_t* idx,
                     const int32_t* counts, T* g_features, cudaStream_t stream);
template <typename T>
int trilinear_devoxelize_fwd(int64_t B, int64_t C, int64_t N, int R, const T* grid, const T* coords, T* out,
                             cudaStream_t stream);
// keys [B, 8 N] int32: the voxel of each corner, for the host's sort.
template <typename T>
int trilinear_devoxelize_keys(int64_t B, int64_t N, int R, const T* coords, int32_t* keys, cudaStream_t stream);
// g_grid and g_coords may each be null. g_grid: with order / start the sorted-segment gather,
// else atomics (g_grid zeroed by the caller).
template <typename T>
int trilinear_devoxelize_bwd(int64_t B, int64_t C, int64_t N, int R, const T* g_out, const T* grid, const T* coords,
                             const int64_t* order, const int64_t* start, T* g_grid, T* g_coords, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
