// CUDA kernels of hash_encode over the shared maths in pyengine/hash_encode.h.
//
// Work split (every kernel): a block is TP points (threadIdx.x; 32, a warp, or 16 in float64)
// x 8 level lanes (threadIdx.y). Each warp reads one level's table for neighbouring points, as
// in tiny-cuda-nn (points arrive in ray order, so coarse levels hit the same cache lines), while
// the block owns whole rows of out / grad_out [N, L * F]. Those rows go through shared memory, so
// the global stores (forward) and loads (backward) are made by consecutive threads at consecutive
// addresses, not by 32 threads L * F elements apart. dL/dx is summed over the levels in shared
// memory, in a fixed order, and stored once per point: no atomics, bit-identical reruns. Table
// rows are read with one vector load where the table is aligned (load_row). Table gradients are
// scattered with atomics (points share rows); on sm_90+ two or four features go out as one
// vector atomic.
#include <cuda_runtime.h>

#include <type_traits>

#include "pyengine/hash_encode.h"

namespace pe {
namespace cuda {
namespace {

// A block: TP points (a warp of them; 16 in float64, so that 32 levels x 8 features fit the 48 KiB
// of shared memory a launch may ask for) times kLevelLanes level lanes.
template <typename T>
constexpr int kTilePoints = sizeof(T) > 4 ? 16 : 32;
constexpr int kLevelLanes = 8;

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

// Shared memory: a [TP, L * F + 1] tile (the odd row stride keeps the lanes of a warp, which
// write one level of TP rows, on different banks), then, for the backward kernels, the per-lane
// partial sums of dL/dx, [kLevelLanes, TP, D]. At most 16 x 257 x 8 + 8 x 16 x 4 x 8 bytes (37 KiB).

template <typename S, int TP, int D>
size_t tile_smem(const HashLevels& lv, int F, bool with_dx) {
  return (static_cast<size_t>(TP) * (lv.n_levels * F + 1) +
          (with_dx ? static_cast<size_t>(kLevelLanes) * TP * D : 0)) * sizeof(S);
}

// Points of this block's tile (the last tile may be short).
template <int TP>
__device__ __forceinline__ int points_in_tile(int64_t N, int64_t n0) {
  return N - n0 < TP ? static_cast<int>(N - n0) : TP;
}

// The block's rows [np, LF] between global memory (consecutive threads at consecutive addresses)
// and the tile (row stride LF + 1), with the storage conversions.
template <int TP, typename S, typename G>
__device__ __forceinline__ void rows_to_tile(const G* rows, int np, int LF, int tid, S* tile) {
  for (int i = tid; i < np * LF; i += TP * kLevelLanes) {
    const int q = i / LF;
    tile[q * (LF + 1) + (i - q * LF)] = load_as<S>(rows[i]);
  }
}
template <int TP, typename S, typename G>
__device__ __forceinline__ void tile_to_rows(const S* tile, int np, int LF, int tid, G* rows) {
  for (int i = tid; i < np * LF; i += TP * kLevelLanes) {
    const int q = i / LF;
    store_to(rows + i, tile[q * (LF + 1) + (i - q * LF)]);
  }
}

// Sums the lanes' partial dL/dx (red: [kLevelLanes, TP, D]) in lane order and stores one value
// per (point, dim) of the tile.
template <typename T, int TP, int D>
__device__ __forceinline__ void store_dx(const T* red, int np, int tid, T* grad_x) {
  for (int i = tid; i < np * D; i += TP * kLevelLanes) {
    const int q = i / D, d = i - q * D;
    T s = red[q * D + d];
#pragma unroll
    for (int y = 1; y < kLevelLanes; ++y) s += red[(y * TP + q) * D + d];
    grad_x[i] = s;
  }
}

template <typename T, typename P, int D, int F>
__global__ void __launch_bounds__(32 * kLevelLanes)
    hash_encode_fwd_kernel(int64_t N, const HashLevels lv, int interp, bool vec,
                           const T* __restrict__ x, const P* __restrict__ params,
                           P* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);
  const int LF = lv.n_levels * F, row = LF + 1;
  constexpr int TP = kTilePoints<T>;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * TP;
  const int np = points_in_tile<TP>(N, n0), p = threadIdx.x;
  if (p < np) {  // no return: every thread reaches the barrier
    for (int l = threadIdx.y; l < lv.n_levels; l += kLevelLanes) {
      GridCell<T, D> c;
      grid_cell<T, D>(x + (n0 + p) * D, static_cast<T>(lv.scale[l]), interp, c);
      T o[F];
      hash_level_fwd<T, D, F, P>(c, params + static_cast<size_t>(lv.offset[l]) * F, lv.res[l],
                                 lv.offset[l + 1] - lv.offset[l], (lv.hashed_mask >> l) & 1, o, vec);
#pragma unroll
      for (int f = 0; f < F; ++f) tile[p * row + l * F + f] = o[f];
    }
  }
  __syncthreads();
  tile_to_rows<TP>(tile, np, LF, threadIdx.y * TP + p, out + n0 * LF);
}

template <typename T, typename P, int D, int F>
__global__ void __launch_bounds__(32 * kLevelLanes)
    hash_encode_bwd_kernel(int64_t N, const HashLevels lv, int interp, bool vec,
                           const T* __restrict__ x, const P* __restrict__ params,
                           const P* __restrict__ grad_out, T* __restrict__ grad_params,
                           T* __restrict__ grad_x) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int LF = lv.n_levels * F, row = LF + 1;
  T* tile = reinterpret_cast<T*>(smem_raw);
  constexpr int TP = kTilePoints<T>;
  T* red = tile + TP * row;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * TP;
  const int np = points_in_tile<TP>(N, n0), p = threadIdx.x, tid = threadIdx.y * TP + p;
  rows_to_tile<TP>(grad_out + n0 * LF, np, LF, tid, tile);
  __syncthreads();
  T dx[D] = {};
  if (p < np) {
    AtomicAdd add;
    for (int l = threadIdx.y; l < lv.n_levels; l += kLevelLanes) {
      GridCell<T, D> c;
      grid_cell<T, D>(x + (n0 + p) * D, static_cast<T>(lv.scale[l]), interp, c);
      T g[F];
#pragma unroll
      for (int f = 0; f < F; ++f) g[f] = tile[p * row + l * F + f];
      const size_t off = static_cast<size_t>(lv.offset[l]) * F;
      hash_level_bwd<T, D, F, P>(c, params + off, grad_params ? grad_params + off : nullptr, lv.res[l],
                                 lv.offset[l + 1] - lv.offset[l], (lv.hashed_mask >> l) & 1, g,
                                 grad_params != nullptr, grad_x != nullptr, dx, add, vec);
    }
  }
  if (grad_x != nullptr) {  // the same for every thread of the block
#pragma unroll
    for (int d = 0; d < D; ++d) red[(threadIdx.y * TP + p) * D + d] = dx[d];
    __syncthreads();
    store_dx<T, TP, D>(red, np, tid, grad_x + n0 * D);
  }
}

template <typename T, typename P, int D, int F>
__global__ void __launch_bounds__(32 * kLevelLanes)
    hash_encode_bwd_bwd_kernel(int64_t N, const HashLevels lv, int interp, bool vec,
                               const T* __restrict__ x, const P* __restrict__ params,
                               const P* __restrict__ grad_out, const T* __restrict__ gg_x,
                               P* __restrict__ d_grad_out, T* __restrict__ grad_x,
                               T* __restrict__ grad_params) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int LF = lv.n_levels * F, row = LF + 1;
  T* tile = reinterpret_cast<T*>(smem_raw);  // grad_out, then, slot by slot, d_grad_out
  constexpr int TP = kTilePoints<T>;
  T* red = tile + TP * row;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * TP;
  const int np = points_in_tile<TP>(N, n0), p = threadIdx.x, tid = threadIdx.y * TP + p;
  rows_to_tile<TP>(grad_out + n0 * LF, np, LF, tid, tile);
  __syncthreads();
  T dx[D] = {};
  if (p < np) {
    T gg[D];
#pragma unroll
    for (int d = 0; d < D; ++d) gg[d] = gg_x[(n0 + p) * D + d];
    AtomicAdd add;
    for (int l = threadIdx.y; l < lv.n_levels; l += kLevelLanes) {
      GridCell<T, D> c;
      grid_cell<T, D>(x + (n0 + p) * D, static_cast<T>(lv.scale[l]), interp, c);
      T g[F], dg[F] = {};
      T* slot = tile + p * row + l * F;  // this thread's alone after the barrier above
#pragma unroll
      for (int f = 0; f < F; ++f) g[f] = slot[f];
      const size_t off = static_cast<size_t>(lv.offset[l]) * F;
      hash_level_bwd_bwd<T, D, F, P>(c, params + off, grad_params ? grad_params + off : nullptr,
                                     lv.res[l], lv.offset[l + 1] - lv.offset[l],
                                     (lv.hashed_mask >> l) & 1, g, gg, grad_params != nullptr,
                                     d_grad_out != nullptr, grad_x != nullptr, dg, dx, add, vec);
#pragma unroll
      for (int f = 0; f < F; ++f) slot[f] = dg[f];
    }
  }
#pragma unroll
  for (int d = 0; d < D; ++d) red[(threadIdx.y * TP + p) * D + d] = dx[d];
  __syncthreads();
  if (d_grad_out != nullptr) tile_to_rows<TP>(tile, np, LF, tid, d_grad_out + n0 * LF);
  if (grad_x != nullptr) store_dx<T, TP, D>(red, np, tid, grad_x + n0 * D);
}

template <typename T>
dim3 tiles(int64_t N) {
  return dim3(static_cast<unsigned>((N + kTilePoints<T> - 1) / kTilePoints<T>));
}
template <typename T>
dim3 tile_block() { return dim3(kTilePoints<T>, kLevelLanes); }

// ---- launchers ------------------------------------------------------------------------------

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
  const bool vec = hash_rows_aligned(a.params, a.F);
  return launch_dims(a.D, a.F, [&](auto d, auto f) {
    constexpr int D = decltype(d)::value, F = decltype(f)::value;
    hash_encode_fwd_kernel<T, P, D, F>
        <<<tiles<T>(a.N), tile_block<T>(), tile_smem<T, kTilePoints<T>, D>(lv, F, false), stream>>>(
            a.N, lv, a.interp, vec, a.x, a.params, a.out);
  });
}

template <typename T, typename P>
int hash_encode_bwd(const HashLevels& lv, const HashArgs<T, P>& a, cudaStream_t stream) {
  if (a.N == 0 || (a.grad_params == nullptr && a.grad_x == nullptr)) return 0;
  const bool vec = hash_rows_aligned(a.params, a.F);
  return launch_dims(a.D, a.F, [&](auto d, auto f) {
    constexpr int D = decltype(d)::value, F = decltype(f)::value;
    hash_encode_bwd_kernel<T, P, D, F>
        <<<tiles<T>(a.N), tile_block<T>(), tile_smem<T, kTilePoints<T>, D>(lv, F, true), stream>>>(
            a.N, lv, a.interp, vec, a.x, a.params, a.grad_out, a.grad_params, a.grad_x);
  });
}

template <typename T, typename P>
int hash_encode_bwd_bwd(const HashLevels& lv, const HashArgs<T, P>& a, cudaStream_t stream) {
  if (a.N == 0 || (a.out == nullptr && a.grad_x == nullptr && a.grad_params == nullptr)) return 0;
  const bool vec = hash_rows_aligned(a.params, a.F);
  return launch_dims(a.D, a.F, [&](auto d, auto f) {
    constexpr int D = decltype(d)::value, F = decltype(f)::value;
    hash_encode_bwd_bwd_kernel<T, P, D, F>
        <<<tiles<T>(a.N), tile_block<T>(), tile_smem<T, kTilePoints<T>, D>(lv, F, true), stream>>>(
            a.N, lv, a.interp, vec, a.x, a.params, a.grad_out, a.gg_x, a.out, a.grad_x, a.grad_params);
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
