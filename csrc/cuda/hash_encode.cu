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

// One launch configuration for all three kernels.
struct Launch {
  int64_t N;
  const HashLevels& lv;
  cudaStream_t stream;
  dim3 grid() const {
    return dim3(static_cast<unsigned>((N + kThreads - 1) / kThreads), lv.n_levels);
  }
};

template <typename T, typename P>
struct FwdFn {
  Launch L;
  int interp;
  const void *x, *params;
  void* out;
  template <int D, int F>
  void run() {
    hash_encode_fwd_kernel<T, P, D, F><<<L.grid(), kThreads, 0, L.stream>>>(
        L.N, L.lv, interp, static_cast<const T*>(x), static_cast<const P*>(params),
        static_cast<P*>(out));
  }
};

template <typename T, typename P>
struct BwdFn {
  Launch L;
  int interp;
  const void *x, *params, *grad_out;
  void *grad_params, *grad_x;
  template <int D, int F>
  void run() {
    hash_encode_bwd_kernel<T, P, D, F><<<L.grid(), kThreads, 0, L.stream>>>(
        L.N, L.lv, interp, static_cast<const T*>(x), static_cast<const P*>(params),
        static_cast<const P*>(grad_out), static_cast<T*>(grad_params), static_cast<T*>(grad_x));
  }
};

template <typename T, typename P>
struct BwdBwdFn {
  Launch L;
  int interp;
  const void *x, *params, *grad_out, *gg_x;
  void *d_grad_out, *grad_x, *grad_params;
  template <int D, int F>
  void run() {
    hash_encode_bwd_bwd_kernel<T, P, D, F><<<L.grid(), kThreads, 0, L.stream>>>(
        L.N, L.lv, interp, static_cast<const T*>(x), static_cast<const P*>(params),
        static_cast<const P*>(grad_out), static_cast<const T*>(gg_x), static_cast<P*>(d_grad_out),
        static_cast<T*>(grad_x), static_cast<T*>(grad_params));
  }
};

// Runs Fn<T, P> for the table type; T is double only for double tables.
template <template <typename, typename> class Fn, typename... Args>
int launch(int table_type, int D, int F, Args&&... args) {
  bool ok = false;
  switch (table_type) {
    case kTableF32: {
      Fn<float, float> fn{args...};
      ok = dispatch_hash_dims(D, F, fn);
      break;
    }
    case kTableF16: {
      Fn<float, __half> fn{args...};
      ok = dispatch_hash_dims(D, F, fn);
      break;
    }
    case kTableBF16: {
      Fn<float, __nv_bfloat16> fn{args...};
      ok = dispatch_hash_dims(D, F, fn);
      break;
    }
    case kTableF64: {
      Fn<double, double> fn{args...};
      ok = dispatch_hash_dims(D, F, fn);
      break;
    }
    default:
      break;
  }
  if (!ok) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int hash_encode_fwd(int64_t N, int D, int F, const HashLevels& lv, int interp, int table_type,
                    const void* x, const void* params, void* out, void* stream) {
  if (N == 0 || lv.n_levels == 0) return 0;
  Launch L{N, lv, static_cast<cudaStream_t>(stream)};
  return launch<FwdFn>(table_type, D, F, L, interp, x, params, out);
}

int hash_encode_bwd(int64_t N, int D, int F, const HashLevels& lv, int interp, int table_type,
                    const void* x, const void* params, const void* grad_out, void* grad_params,
                    void* grad_x, void* stream) {
  if (N == 0 || lv.n_levels == 0) return 0;
  Launch L{N, lv, static_cast<cudaStream_t>(stream)};
  return launch<BwdFn>(table_type, D, F, L, interp, x, params, grad_out, grad_params, grad_x);
}

int hash_encode_bwd_bwd(int64_t N, int D, int F, const HashLevels& lv, int interp, int table_type,
                        const void* x, const void* params, const void* grad_out, const void* gg_x,
                        void* d_grad_out, void* grad_x, void* grad_params, void* stream) {
  if (N == 0 || lv.n_levels == 0) return 0;
  Launch L{N, lv, static_cast<cudaStream_t>(stream)};
  return launch<BwdBwdFn>(table_type, D, F, L, interp, x, params, grad_out, gg_x, d_grad_out,
                          grad_x, grad_params);
}

}  // namespace cuda
}  // namespace pe
