// CPU kernels of composite: OpenMP loops over the per-ray maths in pyengine/composite.h, the same
// functions the CUDA kernels run.
//
// Work split: one ray per iteration; the iteration owns the ray's samples and its rows of the
// per-ray outputs, so nothing is shared between threads. Rays differ in length (empty rays next
// to rays of hundreds of samples), so the loop is scheduled dynamically in chunks of rays large
// enough (kChunk) to keep the scheduling cost small next to the work.
#include "pyengine/composite.h"

#include <cstdint>

namespace pe {
namespace cpu {
namespace {

constexpr int64_t kChunk = 64;

}  // namespace

template <typename T>
void composite_fwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeFwdPtrs<T>& p) {
  if (R == 0) return;
  dispatch_composite(C, alpha_mode, [&](auto ct, auto alpha) {
#pragma omp parallel for schedule(dynamic, kChunk)
    for (int64_t r = 0; r < R; ++r)
      composite_ray_fwd<T, decltype(ct)::value, decltype(alpha)::value>(p, r, S, C);
  });
}

template <typename T>
void composite_bwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeBwdPtrs<T>& p) {
  if (R == 0 || (p.grad_x == nullptr && p.grad_values == nullptr)) return;
  dispatch_composite(C, alpha_mode, [&](auto ct, auto alpha) {
#pragma omp parallel for schedule(dynamic, kChunk)
    for (int64_t r = 0; r < R; ++r)
      composite_ray_bwd<T, decltype(ct)::value, decltype(alpha)::value>(p, r, S, C);
  });
}

template void composite_fwd<float>(int64_t, int64_t, int, bool, const CompositeFwdPtrs<float>&);
template void composite_fwd<double>(int64_t, int64_t, int, bool, const CompositeFwdPtrs<double>&);
template void composite_bwd<float>(int64_t, int64_t, int, bool, const CompositeBwdPtrs<float>&);
template void composite_bwd<double>(int64_t, int64_t, int, bool, const CompositeBwdPtrs<double>&);

}  // namespace cpu
}  // namespace pe
