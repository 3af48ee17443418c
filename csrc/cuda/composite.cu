// CUDA kernels of composite over the shared per-ray maths in pyengine/composite.h.
//
// Work split (as nerfacc): one thread per ray, which walks the ray's samples sequentially for
// the exclusive scan (forward) or the reverse suffix scan (backward). A thread owns its ray's
// sample range and per-ray outputs, so there are no atomics. Reads are not coalesced across a
// warp (neighbouring threads walk neighbouring ranges), but each thread streams through a
// contiguous range, so the cache lines it touches are fully used over the loop; the op moves a
// few words per sample and is bound by memory latency, not arithmetic.
#include <cuda_runtime.h>

#include "pyengine/composite.h"

namespace pe {
namespace cuda {
namespace {

constexpr int kThreads = 128;

template <typename T, int CT, bool ALPHA>
__global__ void composite_fwd_kernel(int64_t R, int64_t S, int C, const CompositeFwdPtrs<T> p) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  composite_ray_fwd<T, CT, ALPHA>(p, r, S, C);
}

template <typename T, int CT, bool ALPHA>
__global__ void composite_bwd_kernel(int64_t R, int64_t S, int C, const CompositeBwdPtrs<T> p) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  composite_ray_bwd<T, CT, ALPHA>(p, r, S, C);
}

unsigned blocks(int64_t R) { return static_cast<unsigned>((R + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
int composite_fwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeFwdPtrs<T>& p,
                  cudaStream_t stream) {
  if (R == 0) return 0;
  dispatch_composite(C, alpha_mode, [&](auto ct, auto alpha) {
    composite_fwd_kernel<T, decltype(ct)::value, decltype(alpha)::value>
        <<<blocks(R), kThreads, 0, stream>>>(R, S, C, p);
  });
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int composite_bwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeBwdPtrs<T>& p,
                  cudaStream_t stream) {
  if (R == 0 || (p.grad_x == nullptr && p.grad_values == nullptr)) return 0;
  dispatch_composite(C, alpha_mode, [&](auto ct, auto alpha) {
    composite_bwd_kernel<T, decltype(ct)::value, decltype(alpha)::value>
        <<<blocks(R), kThreads, 0, stream>>>(R, S, C, p);
  });
  return static_cast<int>(cudaGetLastError());
}

#define PE_INSTANTIATE(T)                                                                      \
  template int composite_fwd<T>(int64_t, int64_t, int, bool, const CompositeFwdPtrs<T>&,       \
                                cudaStream_t);                                                 \
  template int composite_bwd<T>(int64_t, int64_t, int, bool, const CompositeBwdPtrs<T>&,       \
                                cudaStream_t);
PE_INSTANTIATE(float)
PE_INSTANTIATE(double)
#undef PE_INSTANTIATE

}  // namespace cuda
}  // namespace pe
