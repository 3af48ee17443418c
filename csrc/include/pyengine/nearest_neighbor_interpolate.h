// nearest_neighbor_interpolate (PVCNN's three-nearest-neighbour interpolation): the per-point
// maths shared by the CPU and CUDA kernels. pyengine/reference/nearest_neighbor_interpolate.py is
// the specification.
//
// Point n of batch b: its three nearest centres i0, i1, i2 by d2 (pyengine/points.h, point minus
// centre), nearest first, ties to the lower centre index (a centre replaces a kept one only when
// strictly nearer). With M < 3 centres the missing ones have index 0 and d2 = +inf. Each d2 is
// clamped into [1e-10, 1e10] (PVCNN's epsilon and cap) and the weights are the normalised inverse
// squared distances, in PVCNN's form:
//   w0 = d1 d2 / s,  w1 = d0 d2 / s,  w2 = d0 d1 / s,   s = d0 d1 + d0 d2 + d1 d2,
//   out[b, c, n] = w0 f[b, c, i0] + w1 f[b, c, i1] + w2 f[b, c, i2],
//   dL/df[b, c, m] = sum_{(k, n): i_k[b, n] = m} w_k[b, n] dL/dout[b, c, n]
// (the coordinates get no gradient, as in PVCNN). With M = 0 the output is 0, indices 0, weights 0.
//
// Reductions: the backward gathers several points into one centre. The CPU kernel gives each
// (b, c) row to one thread, which adds in the order (k ascending, then n ascending); the CUDA
// kernel either scatters with atomics or, when deterministic, walks each centre's segment of the
// host's stable sort of the flat [3 N] indices (position k N + n), which is that same order.
#pragma once

#include <cstdint>

#include "pyengine/points.h"

namespace pe {

// Indices and weights of point n (points [3, N], centers [3, M] of its batch); M >= 1.
template <typename T>
PE_HD void three_nearest(const T* points, int64_t N, int64_t n, const T* centers, int64_t M, int32_t* id, T* w) {
  const T inf = T(1) / T(0);
  T d[3] = {inf, inf, inf};
  id[0] = id[1] = id[2] = 0;
  for (int64_t m = 0; m < M; ++m) {
    const T dm = pt_dist2(points, N, n, centers, M, m);
    if (!(dm < d[2])) continue;
    const int32_t i = static_cast<int32_t>(m);
    if (dm < d[1]) {
      d[2] = d[1], id[2] = id[1];
      if (dm < d[0]) {
        d[1] = d[0], id[1] = id[0];
        d[0] = dm, id[0] = i;
      } else {
        d[1] = dm, id[1] = i;
      }
    } else {
      d[2] = dm, id[2] = i;
    }
  }
  const T lo = T(1e-10), hi = T(1e10);
  for (int k = 0; k < 3; ++k) d[k] = d[k] < lo ? lo : (d[k] > hi ? hi : d[k]);
  const T d01 = rn_mul(d[0], d[1]), d02 = rn_mul(d[0], d[2]), d12 = rn_mul(d[1], d[2]);
  const T inv = T(1) / (d01 + d02 + d12);
  w[0] = rn_mul(d12, inv), w[1] = rn_mul(d02, inv), w[2] = rn_mul(d01, inv);
}

// out for one (b, c, n) from the point's three centres: f [M] is the (b, c) row of the features.
template <typename T>
PE_HD T three_interpolate(const T* f, const int32_t* id, const T* w) {
  return rn_mul(w[0], f[id[0]]) + rn_mul(w[1], f[id[1]]) + rn_mul(w[2], f[id[2]]);
}

// ---------------------------------------------------------------------------------------------
// Launchers, T = float or double: points [B, 3, N], centers [B, 3, M], features / g_features
// [B, C, M], out / g_out [B, C, N], idx [B, 3, N] int32, weights [B, 3, N].
namespace cpu {
template <typename T>
void nearest_neighbor_interpolate_fwd(int64_t B, int64_t C, int64_t N, int64_t M, const T* points, const T* centers,
                                      const T* features, T* out, int32_t* idx, T* weights);
// g_features zeroed by the caller.
template <typename T>
void nearest_neighbor_interpolate_bwd(int64_t B, int64_t C, int64_t N, int64_t M, const T* g_out, const int32_t* idx,
                                      const T* weights, T* g_features);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
// Each returns 0 or a cudaError_t. The backward: with order [B, 3 N] int64 (the stable order of a
// batch's flat indices) and start [B, M + 1] int64, the sorted-segment sums; with null order,
// atomics into g_features (zeroed by the caller).
namespace cuda {
template <typename T>
int nearest_neighbor_interpolate_fwd(int64_t B, int64_t C, int64_t N, int64_t M, const T* points, const T* centers,
                                     const T* features, T* out, int32_t* idx, T* weights, cudaStream_t stream);
template <typename T>
int nearest_neighbor_interpolate_bwd(int64_t B, int64_t C, int64_t N, int64_t M, const T* g_out, const int32_t* idx,
                                     const T* weights, const int64_t* order, const int64_t* start, T* g_features,
                                     cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
