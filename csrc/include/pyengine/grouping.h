// gather and grouping (PVCNN's gather and grouping): the maths shared by the CPU and CUDA kernels.
// pyengine/reference/grouping.py is the specification.
//
// Both read features [B, C, N] at int32 indices: gather's [B, L] and grouping's [B, M, K], which
// is gather of the flat [B, M K] indices. Index i reads point clamp(i, 0, N - 1) (the Python
// layer rejects out-of-range indices unless told not to check); with N = 0 every read is 0.
//   out[b, c, l] = features[b, c, idx[b, l]],
//   dL/dfeatures[b, c, n] = sum_{l: idx[b, l] = n} dL/dout[b, c, l].
//
// The backward's sum gathers several outputs into one point. The CPU kernel gives each (b, c) row
// to one thread, which adds the outputs in order (l ascending): deterministic. The CUDA kernel
// either scatters with atomics (fast, order-dependent) or, when asked to be deterministic, reduces
// sorted segments: the host stably sorts each batch's indices and finds where each point's
// segment starts, and one thread per (b, c, n) adds its segment in order (l ascending, the CPU's
// order, so the two give the same bits).
#pragma once

#include <cstdint>

#include "pyengine/points.h"

namespace pe {

// ---------------------------------------------------------------------------------------------
// Launchers, T = float or double: features / g_features [B, C, N], idx [B, L] int32, out / g_out
// [B, C, L].
namespace cpu {
template <typename T>
void gather_fwd(int64_t B, int64_t C, int64_t N, int64_t L, const T* features, const int32_t* idx, T* out);
// g_features zeroed by the caller.
template <typename T>
void gather_bwd(int64_t B, int64_t C, int64_t N, int64_t L, const T* g_out, const int32_t* idx, T* g_features);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
// Each returns 0 or a cudaError_t. order [B, L] int64 is the stable order of a batch's (clamped)
// indices and start [B, N + 1] int64 where point n's segment begins in it; with null order the
// backward scatters with atomics into g_features (zeroed by the caller).
namespace cuda {
template <typename T>
int gather_fwd(int64_t B, int64_t C, int64_t N, int64_t L, const T* features, const int32_t* idx, T* out,
               cudaStream_t stream);
template <typename T>
int gather_bwd(int64_t B, int64_t C, int64_t N, int64_t L, const T* g_out, const int32_t* idx, const int64_t* order,
               const int64_t* start, T* g_features, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
