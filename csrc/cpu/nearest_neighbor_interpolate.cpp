// CPU kernels of nearest_neighbor_interpolate (see pyengine/nearest_neighbor_interpolate.h):
// the neighbours of each point, one point per OpenMP iteration, then one (b, c) row per
// iteration for the interpolation and for the backward, which adds in a fixed order (k, then n)
// without atomics: every run and thread count gives the same bits.
#include "pyengine/nearest_neighbor_interpolate.h"

namespace pe {
namespace cpu {

template <typename T>
void nearest_neighbor_interpolate_fwd(int64_t B, int64_t C, int64_t N, int64_t M, const T* points, const T* centers,
                                      const T* features, T* out, int32_t* idx, T* weights) {
  if (M == 0) return;  // the caller's zeros
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B * N; ++i) {
    const int64_t b = i / N, n = i % N;
    int32_t id[3];
    T w[3];
    three_nearest(points + b * 3 * N, N, n, centers + b * 3 * M, M, id, w);
    for (int k = 0; k < 3; ++k) idx[(b * 3 + k) * N + n] = id[k], weights[(b * 3 + k) * N + n] = w[k];
  }
#pragma omp parallel for schedule(static)
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const int64_t b = bc / C;
    const int32_t* ib = idx + b * 3 * N;
    const T* wb = weights + b * 3 * N;
    const T* f = features + bc * M;
    T* o = out + bc * N;
    for (int64_t n = 0; n < N; ++n) {
      const int32_t id[3] = {ib[n], ib[N + n], ib[2 * N + n]};
      const T w[3] = {wb[n], wb[N + n], wb[2 * N + n]};
      o[n] = three_interpolate(f, id, w);
    }
  }
}

template <typename T>
void nearest_neighbor_interpolate_bwd(int64_t B, int64_t C, int64_t N, int64_t M, const T* g_out, const int32_t* idx,
                                      const T* weights, T* g_features) {
  if (M == 0) return;
#pragma omp parallel for schedule(static)
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const int64_t b = bc / C;
    const int32_t* ib = idx + b * 3 * N;
    const T* wb = weights + b * 3 * N;
    const T* go = g_out + bc * N;
    T* g = g_features + bc * M;
    for (int64_t j = 0; j < 3 * N; ++j) g[ib[j]] += rn_mul(wb[j], go[j % N]);
  }
}

#define PE_NNI_INSTANTIATE(T)                                                                                     \
  template void nearest_neighbor_interpolate_fwd<T>(int64_t, int64_t, int64_t, int64_t, const T*, const T*,       \
                                                    const T*, T*, int32_t*, T*);                                  \
  template void nearest_neighbor_interpolate_bwd<T>(int64_t, int64_t, int64_t, int64_t, const T*, const int32_t*, \
                                                    const T*, T*);
PE_NNI_INSTANTIATE(float)
PE_NNI_INSTANTIATE(double)
#undef PE_NNI_INSTANTIATE

}  // namespace cpu
}  // namespace pe
