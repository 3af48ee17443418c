// CPU kernel of ball_query: one centre per OpenMP iteration over the maths of
// pyengine/ball_query.h.
#include "pyengine/ball_query.h"

namespace pe {
namespace cpu {

template <typename T>
void ball_query(int64_t B, int64_t M, int64_t N, int64_t K, T r2, const T* centers, const T* points, int32_t* out) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B * M; ++i) {
    const int64_t b = i / M, m = i % M;
    ball_query_centre(centers + b * 3 * M, M, m, points + b * 3 * N, N, r2, K, out + i * K);
  }
}

template void ball_query<float>(int64_t, int64_t, int64_t, int64_t, float, const float*, const float*, int32_t*);
template void ball_query<double>(int64_t, int64_t, int64_t, int64_t, double, const double*, const double*, int32_t*);

}  // namespace cpu
}  // namespace pe
