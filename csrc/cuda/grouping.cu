// CUDA kernels of gather / grouping over pyengine/grouping.h.
//
// Work split: one thread per (b, c, l) output for the forward and the atomic backward (coalesced
// along l, the fastest dimension of out), one thread per (b, c, n) point for the deterministic
// backward, which walks point n's segment of the host's stable sort in order. All loops are
// grid-stride over an int64 range, so any size fits a capped grid and many blocks share a batch.
#include <cuda_runtime.h>

#include "pyengine/cuda_grid.h"

#include "pyengine/grouping.h"

namespace pe {
namespace cuda {
namespace {

template <typename T>
__global__ void gather_fwd_kernel(int64_t B, int64_t C, int64_t N, int64_t L, const T* features, const int32_t* idx,
                                  T* out) {
  PE_GRID_LOOP(i, B * C * L) {
    const int64_t bc = i / L, l = i % L, b = bc / C;
    out[i] = N ? features[bc * N + pt_clamp_index(idx[b * L + l], N)] : T(0);
  }
}

// g_features[b, c, idx[b, l]] += g_out[b, c, l]: the additions into one point land in any order.
template <typename T>
__global__ void gather_bwd_atomic_kernel(int64_t B, int64_t C, int64_t N, int64_t L, const T* g_out,
                                         const int32_t* idx, T* g_features) {
  PE_GRID_LOOP(i, B * C * L) {
    const int64_t bc = i / L, l = i % L, b = bc / C;
    atomicAdd(g_features + bc * N + pt_clamp_index(idx[b * L + l], N), g_out[i]);
  }
}

// The deterministic backward: point n of (b, c) adds its segment of the sorted outputs in order.
template <typename T>
__global__ void gather_bwd_segment_kernel(int64_t B, int64_t C, int64_t N, int64_t L, const T* g_out,
                                          const int64_t* order, const int64_t* start, T* g_features) {
  PE_GRID_LOOP(i, B * C * N) {
    const int64_t bc = i / N, n = i % N, b = bc / C;
    const int64_t* s = start + b * (N + 1);
    const int64_t* o = order + b * L;
    const T* go = g_out + bc * L;
    T sum = T(0);
    for (int64_t j = s[n]; j < s[n + 1]; ++j) sum += go[o[j]];
    g_features[i] = sum;
  }
}

#undef PE_GRID_LOOP

int status() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

template <typename T>
int gather_fwd(int64_t B, int64_t C, int64_t N, int64_t L, const T* features, const int32_t* idx, T* out,
               cudaStream_t stream) {
  if (B * C * L == 0) return 0;
  gather_fwd_kernel<T><<<blocks(B * C * L), kThreads, 0, stream>>>(B, C, N, L, features, idx, out);
  return status();
}

template <typename T>
int gather_bwd(int64_t B, int64_t C, int64_t N, int64_t L, const T* g_out, const int32_t* idx, const int64_t* order,
               const int64_t* start, T* g_features, cudaStream_t stream) {
  if (B * C * N == 0) return 0;
  if (order) {
    gather_bwd_segment_kernel<T><<<blocks(B * C * N), kThreads, 0, stream>>>(B, C, N, L, g_out, order, start,
                                                                            g_features);
    return status();
  }
  if (L == 0) return 0;
  gather_bwd_atomic_kernel<T><<<blocks(B * C * L), kThreads, 0, stream>>>(B, C, N, L, g_out, idx, g_features);
  return status();
}

#define PE_GROUPING_INSTANTIATE(T)                                                                               \
  template int gather_fwd<T>(int64_t, int64_t, int64_t, int64_t, const T*, const int32_t*, T*, cudaStream_t); \
  template int gather_bwd<T>(int64_t, int64_t, int64_t, int64_t, const T*, const int32_t*, const int64_t*,    \
                             const int64_t*, T*, cudaStream_t);
PE_GROUPING_INSTANTIATE(float)
PE_GROUPING_INSTANTIATE(double)
#undef PE_GROUPING_INSTANTIATE

}  // namespace cuda
}  // namespace pe
