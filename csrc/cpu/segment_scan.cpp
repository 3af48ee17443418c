// CPU kernels of segment_scan: OpenMP loops over the per-segment maths in pyengine/segment_scan.h,
// the same functions the CUDA kernels run. One segment per iteration, scheduled dynamically in
// chunks because segments differ in length (empty next to long ones).
#include "pyengine/segment_scan.h"

namespace pe {
namespace cpu {
namespace {
constexpr int64_t kChunk = 64;
}  // namespace

template <typename T>
void segment_scan_fwd(int64_t R, int64_t S, bool prod, bool exclusive, const int64_t* packed_info, const T* x,
                      T* y) {
  dispatch_segment_scan(prod, exclusive, [&](auto p, auto e) {
#pragma omp parallel for schedule(dynamic, kChunk)
    for (int64_t r = 0; r < R; ++r)
      pe::segment_scan_fwd<T, decltype(p)::value, decltype(e)::value>(packed_info, x, y, r, S);
  });
}

template <typename T>
void segment_scan_bwd(int64_t R, int64_t S, bool prod, bool exclusive, const int64_t* packed_info, const T* x,
                      const T* g, T* dx) {
  dispatch_segment_scan(prod, exclusive, [&](auto p, auto e) {
#pragma omp parallel for schedule(dynamic, kChunk)
    for (int64_t r = 0; r < R; ++r)
      pe::segment_scan_bwd<T, decltype(p)::value, decltype(e)::value>(packed_info, x, g, dx, r, S);
  });
}

template void segment_scan_fwd<float>(int64_t, int64_t, bool, bool, const int64_t*, const float*, float*);
template void segment_scan_fwd<double>(int64_t, int64_t, bool, bool, const int64_t*, const double*, double*);
template void segment_scan_bwd<float>(int64_t, int64_t, bool, bool, const int64_t*, const float*, const float*,
                                      float*);
template void segment_scan_bwd<double>(int64_t, int64_t, bool, bool, const int64_t*, const double*, const double*,
                                       double*);

}  // namespace cpu
}  // namespace pe
