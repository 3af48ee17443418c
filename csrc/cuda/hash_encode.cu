// CUDA kernels of hash_encode over the shared maths in pyengine/hash_encode.h.
//
// Work split (as tiny-cuda-nn): one thread per (point, level), blockIdx.y = level, so the 32
// threads of a warp read the same level's table for 32 neighbouring points; points arrive in
// ray order, so coarse levels hit the same cache lines. Table gradients are scattered with
// atomics (points share rows); on sm_90+ two or four features go out as one vector atomic.
// dL/dx is summed over levels with one atomic per (point, level, dim) into a zeroed buffer.
#include <cuda_runtime.h>

#include <type_traits>

#include "pyengine/hash_encode.h"

namespace pe {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct AtomicAdd {
  template <int F, typename G, typename T>
  __device__ __forceinline__ void vec(G* addr, const T (&v)[F]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // float2 / float4 atomics exist from sm_90; rows are 8 * F-byte aligned (level sizes are
    // multiples of 8 entries and torch allocations are 256-byte aligned).
    if constexpr (std::is_same<G, float>::value && F == 2) {
      atomicAdd(reinterpret_cast<float2*>(addr), make_float2(v[0], v[1]));
    } else if constexpr (std::is_same<G, float>::value && F >= 4) {
#pragma unroll
      for (int f = 0; f < F; f += 4)
        atomicAdd(reinterpret_cast<float4*>(addr + f), make_float4(v[f], v[f + 1], v[f + 2], v[f + 3]));
    } else
#endif
    {
#pragma unroll
    for (int f = 0; f < F; ++f) atomicAdd(addr + f, static_cast<G>(v[f]));
    }
  }
};

template <typename T, typename P, int D, int F>
__global__ void hash_encode_fwd_kernel(int64_t N, const HashLevels lv, int interp,
                                       const T* __restrict__ x, const P* __restrict__ params,
                                       P* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int l = blockIdx.y;
  if (n >= N) return;
  GridCell<T, D> c;
  grid_cell<T, D>(x + n * D, static_cast<T>(lv.scale[l]), interp, c);
  T o[F];
  hash_level_fwd<T, D, F, P>(c, params + static_cast<size_t>(lv.offset[l]) * F, lv.res[l],
                             lv.offset[l + 1] - lv.offset[l], (lv.hashed_mask >> l) & 1, o);
  P* dst = out + (n * lv.n_levels + l) * F;
#pragma unroll
  for (int f = 0; f < F; ++f) store_to(dst + f, o[f]);
}

template <typename T, typename P, int D, int F>
__global__ void hash_encode_bwd_kernel(int64_t N, const HashLevels lv, int interp,
                                       const T* __restrict__ x, const P* __restrict__ params,
                                       const P* __restrict__ grad_out, T* __restrict__ grad_params,
                                       T* __restrict__ grad_x) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int l = blockIdx.y;
  if (n >= N) return;
  GridCell<T, D> c;
  grid_cell<T, D>(x + n * D, static_cast<T>(lv.scale[l]), interp, c);
  T g[F];
  const P* src = grad_out + (n * lv.n_levels + l) * F;
#pragma unroll
  for (int f = 0; f < F; ++f) g[f] = load_as<T>(src[f]);
  const size_t off = static_cast<size_t>(lv.offset[l]) * F;
  T dx[D] = {};
  AtomicAdd add;
  hash_level_bwd<T, D, F, P>(c, params + off, grad_params ? grad_params + off : nullptr, lv.res[l],
                             lv.offset[l + 1] - lv.offset[l], (lv.hashed_mask >> l) & 1, g,
                             grad_params != nullptr, grad_x != nullptr, dx, add);
  if (grad_x) {
#pragma unroll
    for (int d = 0; d < D; ++d) atomicAdd(grad_x + n * D + d, dx[d]);
  }
}

template <typename T, typename P, int D, int F>
__global__ void hash_encode_bwd_bwd_kernel(int64_t N, const HashLevels lv, int interp,
                                           const T* __restrict__ x, const P* __restrict__ params,
                                           const P* __restrict__ grad_out,
                                           const T* __restrict__ gg_x, P* __restrict__ d_grad_out,
                                           T* __restrict__ grad_x, T* __restrict__ grad_params) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int l = blockIdx.y;
  if (n >= N) return;
  GridCell<T, D> c;
  grid_cell<T, D>(x + n * D, static_cast<T>(lv.scale[l]), interp, c);
  T g[F], dg[F] = {}, gg[D], dx[D] = {};
  const int64_t row = (n * lv.n_levels + l) * F;
#pragma unroll
  for (int f = 0; f < F; ++f) g[f] = load_as<T>(grad_out[row + f]);
#pragma unroll
  for (int d = 0; d < D; ++d) gg[d] = gg_x[n * D + d];
  const size_t off = static_cast<size_t>(lv.offset[l]) * F;
  AtomicAdd add;
  hash_level_bwd_bwd<T, D, F, P>(c, params + off, grad_params ? grad_params + off : nullptr,
                                 lv.res[l], lv.offset[l + 1] - lv.offset[l],
                                 (lv.hashed_mask >> l) & 1, g, gg, grad_params != nullptr,
                                 d_grad_out != nullptr, grad_x != nullptr, dg, dx, add);
  if (d_grad_out) {
#pragma unroll
    for (int f = 0; f < F; ++f) store_to(d_grad_out + row + f, dg[f]);
  }
  if (grad_x) {
#pragma unroll
    for (int d = 0; d < D; ++d) atomicAdd(grad_x + n * D + d, dx[d]);
  }
}

dim3 grid(int64_t N, const HashLevels& lv) {
  return dim3(static_cast<unsigned>((N + kThreads - 1) / kThreads), lv.n_levels);
}

// launch(D, F) for the runtime (D, F); cudaErrorInvalidValue when the pair has no kernel.
template <typename Launch>
int launch_dims(int D, int F, Launch&& launch) {
  if (!dispatch_hash_dims(D, F, launch)) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

template <typename T, typename P>
int hash_encode_fwd(const HashLevels& lv, const HashArgs<T, P>& a, cudaStream_t stream) {
  if (a.N == 0) return 0;
  return launch_dims(a.D, a.F, [&](auto d, auto f) {
    hash_encode_fwd_kernel<T, P, decltype(d)::value, decltype(f)::value>
        <<<grid(a.N, lv), kThreads, 0, stream>>>(a.N, lv, a.interp, a.x, a.params, a.out);
  });
}

template <typename T, typename P>
int hash_encode_bwd(const HashLevels& lv, const HashArgs<T, P>& a, cudaStream_t stream) {
  if (a.N == 0 || (a.grad_params == nullptr && a.grad_x == nullptr)) return 0;
  return launch_dims(a.D, a.F, [&](auto d, auto f) {
    hash_encode_bwd_kernel<T, P, decltype(d)::value, decltype(f)::value>
        <<<grid(a.N, lv), kThreads, 0, stream>>>(a.N, lv, a.interp, a.x, a.params, a.grad_out,
                                                  a.grad_params, a.grad_x);
  });
}

template <typename T, typename P>
int hash_encode_bwd_bwd(const HashLevels& lv, const HashArgs<T, P>& a, cudaStream_t stream) {
  if (a.N == 0 || (a.out == nullptr && a.grad_x == nullptr && a.grad_params == nullptr)) return 0;
  return launch_dims(a.D, a.F, [&](auto d, auto f) {
    hash_encode_bwd_bwd_kernel<T, P, decltype(d)::value, decltype(f)::value>
        <<<grid(a.N, lv), kThreads, 0, stream>>>(a.N, lv, a.interp, a.x, a.params, a.grad_out,
                                                  a.gg_x, a.out, a.grad_x, a.grad_params);
  });
}

#define PE_INSTANTIATE(T, P)                                                                \
  template int hash_encode_fwd(const HashLevels&, const HashArgs<T, P>&, cudaStream_t);     \
  template int hash_encode_bwd(const HashLevels&, const HashArgs<T, P>&, cudaStream_t);     \
  template int hash_encode_bwd_bwd(const HashLevels&, const HashArgs<T, P>&, cudaStream_t);
PE_INSTANTIATE(float, float)
PE_INSTANTIATE(float, F16Storage)
PE_INSTANTIATE(float, BF16Storage)
PE_INSTANTIATE(double, double)
#undef PE_INSTANTIATE

}  // namespace cuda
}  // namespace pe
