// furthest_point_sample (PVCNN's furthest point sampling): the maths shared by the CPU and CUDA
// kernels. pyengine/reference/furthest_point_sample.py is the specification.
//
// Per batch: sample 0 is point 0; dist[n] starts at +inf; for i = 1 .. M - 1,
//   dist[n] = min(dist[n], d2(n, idx[i - 1]))   and   idx[i] = the first n of the largest dist[n]
// (ties to the lowest index), d2 as in pyengine/points.h.
//
// Work split. CPU: one batch per OpenMP iteration, the M steps in order. CUDA: the steps are
// sequential, so each step is one launch over (b, t), t < P lanes per batch (P about N / 4); a
// lane updates the distances of points t, t + P, ... and folds them into one (distance, index)
// pair, which it merges into the step's per-batch maximum with an integer atomicMax. Max is
// exact and commutative, so the result does not depend on the order the lanes run in. float32:
// one 64-bit atomic of (distance bits << 32 | ~index), the largest distance, then the lowest
// index; float64 (64-bit distance bits): an atomicMax of the distance, then a second launch in
// which the points at that distance atomicMin their index.
#pragma once

#include <cstdint>

#include "pyengine/points.h"

namespace pe {

// 64-bit key of a float32 distance and its index: larger distance first, then lower index.
PE_HD unsigned long long fps_key(float d, int64_t n) {
  return (static_cast<unsigned long long>(pt_bits(d)) << 32) | (0xffffffffull - static_cast<uint32_t>(n));
}
PE_HD int32_t fps_key_index(unsigned long long key) {
  return static_cast<int32_t>(0xffffffffull - (key & 0xffffffffull));
}

// ---------------------------------------------------------------------------------------------
// Launchers, T = float or double. coords [B, 3, N], idx [B, M] int32, 1 <= M <= N (or M = 0).
namespace cpu {
template <typename T>
void furthest_point_sample(int64_t B, int64_t N, int64_t M, const T* coords, int32_t* idx);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
namespace cuda {
// Workspace from the caller: dist [B, N] in T filled with +inf, keys [B, M] zeroed (unsigned
// 64-bit, used by float only), idx [B, M] filled with INT32_MAX (used by double only; the
// launcher writes every entry either way). Returns 0 or a cudaError_t.
template <typename T>
int furthest_point_sample(int64_t B, int64_t N, int64_t M, const T* coords, T* dist, unsigned long long* keys,
                          int32_t* idx, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
