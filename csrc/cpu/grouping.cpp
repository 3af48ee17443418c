// CPU kernels of gather / grouping (see pyengine/grouping.h): one (b, c) row per OpenMP
// iteration. The backward adds the outputs of a row in order (l ascending), no atomics, so every
// run and thread count gives the same bits.
#include "pyengine/grouping.h"

namespace pe {
namespace cpu {

template <typename T>
void gather_fwd(int64_t B, int64_t C, int64_t N, int64_t L, const T* features, const int32_t* idx, T* out) {
#pragma omp parallel for schedule(static)
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const int32_t* ib = idx + (bc / C) * L;
    const T* f = features + bc * N;
    T* o = out + bc * L;
    if (N == 0) {
      for (int64_t l = 0; l < L; ++l) o[l] = T(0);
      continue;
    }
    for (int64_t l = 0; l < L; ++l) o[l] = f[pt_clamp_index(ib[l], N)];
  }
}

template <typename T>
void gather_bwd(int64_t B, int64_t C, int64_t N, int64_t L, const T* g_out, const int32_t* idx, T* g_features) {
  if (N == 0) return;
#pragma omp parallel for schedule(static)
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const int32_t* ib = idx + (bc / C) * L;
    const T* go = g_out + bc * L;
    T* g = g_features + bc * N;
    for (int64_t l = 0; l < L; ++l) g[pt_clamp_index(ib[l], N)] += go[l];
  }
}

#define PE_GROUPING_INSTANTIATE(T)                                                                   \
  template void gather_fwd<T>(int64_t, int64_t, int64_t, int64_t, const T*, const int32_t*, T*); \
  template void gather_bwd<T>(int64_t, int64_t, int64_t, int64_t, const T*, const int32_t*, T*);
PE_GROUPING_INSTANTIATE(float)
PE_GROUPING_INSTANTIATE(double)
#undef PE_GROUPING_INSTANTIATE

}  // namespace cpu
}  // namespace pe
