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

template <typename T>
CompositeFwdPtrs<T> typed(const CompositeFwdPtrs<void>& p) {
  return {p.packed_info,
          static_cast<const T*>(p.t_starts),
          static_cast<const T*>(p.t_ends),
          static_cast<const T*>(p.x),
          static_cast<const T*>(p.values),
          static_cast<T*>(p.weights),
          static_cast<T*>(p.trans),
          static_cast<T*>(p.alphas),
          static_cast<T*>(p.acc),
          static_cast<T*>(p.opacity),
          static_cast<T*>(p.depth)};
}

template <typename T>
CompositeBwdPtrs<T> typed(const CompositeBwdPtrs<void>& p) {
  return {p.packed_info,
          static_cast<const T*>(p.t_starts),
          static_cast<const T*>(p.t_ends),
          static_cast<const T*>(p.x),
          static_cast<const T*>(p.values),
          static_cast<const T*>(p.trans),
          static_cast<const T*>(p.g_weights),
          static_cast<const T*>(p.g_trans),
          static_cast<const T*>(p.g_alphas),
          static_cast<const T*>(p.g_acc),
          static_cast<const T*>(p.g_opacity),
          static_cast<const T*>(p.g_depth),
          static_cast<T*>(p.grad_x),
          static_cast<T*>(p.grad_values)};
}

unsigned blocks(int64_t R) { return static_cast<unsigned>((R + kThreads - 1) / kThreads); }

template <typename T>
struct FwdFn {
  int64_t R, S;
  int C;
  CompositeFwdPtrs<T> p;
  cudaStream_t stream;
  template <int CT, bool ALPHA>
  void run() {
    composite_fwd_kernel<T, CT, ALPHA><<<blocks(R), kThreads, 0, stream>>>(R, S, C, p);
  }
};

template <typename T>
struct BwdFn {
  int64_t R, S;
  int C;
  CompositeBwdPtrs<T> p;
  cudaStream_t stream;
  template <int CT, bool ALPHA>
  void run() {
    composite_bwd_kernel<T, CT, ALPHA><<<blocks(R), kThreads, 0, stream>>>(R, S, C, p);
  }
};

}  // namespace

int composite_fwd(int64_t R, int64_t S, int C, bool alpha_mode, int dtype,
                  const CompositeFwdPtrs<void>& p, void* stream) {
  if (R == 0) return 0;
  const auto st = static_cast<cudaStream_t>(stream);
  if (dtype == kCompositeF64) {
    FwdFn<double> fn{R, S, C, typed<double>(p), st};
    dispatch_composite(C, alpha_mode, fn);
  } else {
    FwdFn<float> fn{R, S, C, typed<float>(p), st};
    dispatch_composite(C, alpha_mode, fn);
  }
  return static_cast<int>(cudaGetLastError());
}

int composite_bwd(int64_t R, int64_t S, int C, bool alpha_mode, int dtype,
                  const CompositeBwdPtrs<void>& p, void* stream) {
  if (R == 0 || (p.grad_x == nullptr && p.grad_values == nullptr)) return 0;
  const auto st = static_cast<cudaStream_t>(stream);
  if (dtype == kCompositeF64) {
    BwdFn<double> fn{R, S, C, typed<double>(p), st};
    dispatch_composite(C, alpha_mode, fn);
  } else {
    BwdFn<float> fn{R, S, C, typed<float>(p), st};
    dispatch_composite(C, alpha_mode, fn);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace pe
