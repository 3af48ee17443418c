// ball_query (PVCNN's ball query): the per-centre maths shared by the CPU and CUDA kernels.
// pyengine/reference/ball_query.py is the specification.
//
// For centre m of batch b, the neighbours are the first K points n, in index order, with
// d2(centre m, point n) < r2 (strictly; d2 as in pyengine/points.h, centre minus point, r2 the
// squared radius rounded in T). Slots beyond the number found repeat the first neighbour; a
// centre with no point within the radius gets index 0 in every slot (PVCNN's zero-filled output).
#pragma once

#include <cstdint>

#include "pyengine/points.h"

namespace pe {

// The K neighbours of centre m: centers [3, M] and points [3, N] of one batch, out [K].
template <typename T>
PE_HD void ball_query_centre(const T* centers, int64_t M, int64_t m, const T* points, int64_t N, T r2, int64_t K,
                             int32_t* out) {
  int64_t found = 0;
  for (int64_t n = 0; n < N && found < K; ++n) {
    if (pt_dist2(centers, M, m, points, N, n) < r2) out[found++] = static_cast<int32_t>(n);
  }
  const int32_t fill = found ? out[0] : 0;
  for (int64_t k = found; k < K; ++k) out[k] = fill;
}

// ---------------------------------------------------------------------------------------------
// Launchers, T = float or double: centers [B, 3, M], points [B, 3, N], out [B, M, K] int32.
namespace cpu {
template <typename T>
void ball_query(int64_t B, int64_t M, int64_t N, int64_t K, T r2, const T* centers, const T* points, int32_t* out);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
namespace cuda {
// Returns 0 or a cudaError_t.
template <typename T>
int ball_query(int64_t B, int64_t M, int64_t N, int64_t K, T r2, const T* centers, const T* points, int32_t* out,
               cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
