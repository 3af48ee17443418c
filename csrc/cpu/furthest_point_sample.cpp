// CPU kernel of furthest_point_sample: one batch per OpenMP iteration, the samples in order (see
// pyengine/furthest_point_sample.h). Deterministic: nothing is shared between batches.
#include <limits>
#include <vector>

#include "pyengine/furthest_point_sample.h"

namespace pe {
namespace cpu {

template <typename T>
void furthest_point_sample(int64_t B, int64_t N, int64_t M, const T* coords, int32_t* idx) {
  if (M == 0) return;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const T* c = coords + b * 3 * N;
    int32_t* out = idx + b * M;
    std::vector<T> dist(N, std::numeric_limits<T>::infinity());
    int64_t last = 0;
    out[0] = 0;
    for (int64_t i = 1; i < M; ++i) {
      int64_t best_n = 0;
      T best = T(-1);
      for (int64_t n = 0; n < N; ++n) {
        const T d = pt_dist2(c, N, n, c, N, last);
        const T m = d < dist[n] ? d : dist[n];
        dist[n] = m;
        if (m > best) best = m, best_n = n;  // strict: the first of equal maxima
      }
      out[i] = static_cast<int32_t>(best_n);
      last = best_n;
    }
  }
}

template void furthest_point_sample<float>(int64_t, int64_t, int64_t, const float*, int32_t*);
template void furthest_point_sample<double>(int64_t, int64_t, int64_t, const double*, int32_t*);

}  // namespace cpu
}  // namespace pe
