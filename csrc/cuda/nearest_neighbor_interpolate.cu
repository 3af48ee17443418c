// CUDA kernels of nearest_neighbor_interpolate over pyengine/nearest_neighbor_interpolate.h.
//
// Work split: one thread per (b, n) point for the neighbour search (it scans the batch's M
// centres; the threads of a warp read the same centre at once, a broadcast), one thread per
// (b, c, n) for the interpolation and the atomic backward (coalesced along n), one thread per
// (b, c, m) centre for the deterministic backward over its segment of the host's stable sort.
// All loops are grid-stride over an int64 range: many blocks per batch, any size fits.
#include <cuda_runtime.h>

#include "pyengine/cuda_grid.h"

#include "pyengine/nearest_neighbor_interpolate.h"

namespace pe {
namespace cuda {
namespace {

template <typename T>
__global__ void nni_search_kernel(int64_t B, int64_t N, int64_t M, const T* points, const T* centers, int32_t* idx,
                                  T* weights) {
  PE_GRID_LOOP(i, B * N) {
    const int64_t b = i / N, n = i % N;
    int32_t id[3];
    T w[3];
    three_nearest(points + b * 3 * N, N, n, centers + b * 3 * M, M, id, w);
    for (int k = 0; k < 3; ++k) idx[(b * 3 + k) * N + n] = id[k], weights[(b * 3 + k) * N + n] = w[k];
  }
}

template <typename T>
__global__ void nni_fwd_kernel(int64_t B, int64_t C, int64_t N, int64_t M, const T* features, const int32_t* idx,
                               const T* weights, T* out) {
  PE_GRID_LOOP(i, B * C * N) {
    const int64_t bc = i / N, n = i % N, b = bc / C;
    const int32_t* ib = idx + b * 3 * N + n;
    const T* wb = weights + b * 3 * N + n;
    const int32_t id[3] = {ib[0], ib[N], ib[2 * N]};
    const T w[3] = {wb[0], wb[N], wb[2 * N]};
    out[i] = three_interpolate(features + bc * M, id, w);
  }
}

// g_features[b, c, i_k] += w_k g_out[b, c, n]: the additions into one centre land in any order.
template <typename T>
__global__ void nni_bwd_atomic_kernel(int64_t B, int64_t C, int64_t N, int64_t M, const T* g_out, const int32_t* idx,
                                      const T* weights, T* g_features) {
  PE_GRID_LOOP(i, B * C * N) {
    const int64_t bc = i / N, n = i % N, b = bc / C;
    const T go = g_out[i];
    for (int k = 0; k < 3; ++k) {
      const int64_t j = (b * 3 + k) * N + n;
      atomicAdd(g_features + bc * M + idx[j], rn_mul(weights[j], go));
    }
  }
}

// The deterministic backward: centre m of (b, c) adds its segment (flat positions k N + n,
// ascending) in order.
template <typename T>
__global__ void nni_bwd_segment_kernel(int64_t B, int64_t C, int64_t N, int64_t M, const T* g_out, const T* weights,
                                       const int64_t* order, const int64_t* start, T* g_features) {
  PE_GRID_LOOP(i, B * C * M) {
    const int64_t bc = i / M, m = i % M, b = bc / C;
    const int64_t* s = start + b * (M + 1);
    const int64_t* o = order + b * 3 * N;
    const T* wb = weights + b * 3 * N;
    const T* go = g_out + bc * N;
    T sum = T(0);
    for (int64_t j = s[m]; j < s[m + 1]; ++j) sum += rn_mul(wb[o[j]], go[o[j] % N]);
    g_features[i] = sum;
  }
}

#undef PE_GRID_LOOP

int status() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

template <typename T>
int nearest_neighbor_interpolate_fwd(int64_t B, int64_t C, int64_t N, int64_t M, const T* points, const T* centers,
                                     const T* features, T* out, int32_t* idx, T* weights, cudaStream_t stream) {
  if (B * N == 0 || M == 0) return 0;  // M = 0: the caller's zeros
  nni_search_kernel<T><<<blocks(B * N), kThreads, 0, stream>>>(B, N, M, points, centers, idx, weights);
  if (const int err = status()) return err;
  if (C == 0) return 0;
  nni_fwd_kernel<T><<<blocks(B * C * N), kThreads, 0, stream>>>(B, C, N, M, features, idx, weights, out);
  return status();
}

template <typename T>
int nearest_neighbor_interpolate_bwd(int64_t B, int64_t C, int64_t N, int64_t M, const T* g_out, const int32_t* idx,
                                     const T* weights, const int64_t* order, const int64_t* start, T* g_features,
                                     cudaStream_t stream) {
  if (B * C * M == 0) return 0;
  if (order) {
    nni_bwd_segment_kernel<T><<<blocks(B * C * M), kThreads, 0, stream>>>(B, C, N, M, g_out, weights, order, start,
                                                                          g_features);
    return status();
  }
  if (N == 0) return 0;
  nni_bwd_atomic_kernel<T><<<blocks(B * C * N), kThreads, 0, stream>>>(B, C, N, M, g_out, idx, weights, g_features);
  return status();
}

#define PE_NNI_INSTANTIATE(T)                                                                                     \
  template int nearest_neighbor_interpolate_fwd<T>(int64_t, int64_t, int64_t, int64_t, const T*, const T*,        \
                                                   const T*, T*, int32_t*, T*, cudaStream_t);                     \
  template int nearest_neighbor_interpolate_bwd<T>(int64_t, int64_t, int64_t, int64_t, const T*, const int32_t*,  \
                                                   const T*, const int64_t*, const int64_t*, T*, cudaStream_t);
PE_NNI_INSTANTIATE(float)
PE_NNI_INSTANTIATE(double)
#undef PE_NNI_INSTANTIATE

}  // namespace cuda
}  // namespace pe
