// CUDA kernels of composite over the shared per-sample maths in pyengine/composite.h.
//
// Work split: a group of G consecutive lanes of a warp per ray (G = 1, 2, 4, 8, 16 or 32, the
// smallest power of two at least the mean samples per ray). The group walks its ray in chunks of
// G samples: lane j loads sample base + j, so a group's loads and stores are coalesced, and the
// chunk's scan runs across the lanes with warp shuffles (log2 G steps) and a carry from the chunk
// before. Forward: the exclusive sum of tau (density mode) or product of 1 - alpha (alpha mode)
// gives T_i; the per-ray sums are summed per lane and reduced over the group once at the end.
// Backward: the suffix recursion U_k = a_{k+1} + b_{k+1} U_{k+1} (a = g alpha + gT, b = 1 - alpha;
// see composite.h) is a scan of affine maps, run from the ray's last chunk to its first. The
// group owns its ray's samples and outputs, so there are no atomics. The scans add in a tree, not
// one by one, so the sums round differently from the CPU kernel's (within the op's tolerance);
// with G = 1 (about one sample per ray) they are the CPU kernel's sums exactly.
#include <cuda_runtime.h>

#include "pyengine/composite.h"

namespace pe {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // a multiple of every G, so that no group straddles two blocks

// G consecutive lanes of a warp.
struct Group {
  int G, lane;
  unsigned mask;  // the group's lanes within the warp
};

__device__ __forceinline__ Group make_group(int G) {
  const int wl = static_cast<int>(threadIdx.x % 32), first = wl & ~(G - 1);
  return {G, wl - first, G == 32 ? 0xffffffffu : ((1u << G) - 1u) << first};
}

template <typename T>
__device__ __forceinline__ T group_sum(const Group& g, T v) {
  for (int o = g.G / 2; o > 0; o /= 2) v += __shfl_xor_sync(g.mask, v, o, g.G);
  return v;
}

// Inclusive scan over the group's lanes: products (PROD) or sums.
template <typename T, bool PROD>
__device__ __forceinline__ T group_scan(const Group& g, T v) {
  for (int o = 1; o < g.G; o *= 2) {
    const T u = __shfl_up_sync(g.mask, v, o, g.G);
    if (g.lane >= o) v = PROD ? v * u : v + u;
  }
  return v;
}

template <typename T, int CT, bool ALPHA>
__global__ void composite_fwd_kernel(int64_t R, int64_t S, int nc, int G, const CompositeFwdPtrs<T> p) {
  const Group grp = make_group(G);
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / G;
  if (r >= R) return;  // the whole group
  const int C = composite_channels<CT>(nc);
  int64_t begin, end;
  composite_ray_range(p.packed_info, r, S, begin, end);
  T* acc = p.acc + r * C;
  T reg[CT > 0 ? CT : 1];
  PE_COMPOSITE_UNROLL
  for (int c = 0; c < (CT > 0 ? CT : 1); ++c) reg[c] = T(0);
  if (CT == kDynamicC && grp.lane == 0)
    for (int c = 0; c < C; ++c) acc[c] = T(0);
  const T identity = ALPHA ? T(1) : T(0);
  T carry = identity, opacity = T(0), depth = T(0);
  for (int64_t base = begin; base < end; base += G) {
    const int64_t i = base + grp.lane;
    const bool valid = i < end;
    CompositeFwdSample<T> s{T(0), T(0), T(0)};
    if (valid) s = composite_load(p, i);
    const T dt = s.t1 - s.t0;
    const T term = !valid ? identity : ALPHA ? T(1) - s.x : s.x * dt;
    const T incl = group_scan<T, ALPHA>(grp, term);
    const T prev = __shfl_up_sync(grp.mask, incl, 1, G);
    const T excl = grp.lane == 0 ? identity : prev;
    T run = ALPHA ? carry * excl : carry + excl;  // the scan up to sample i, exclusive
    const T total = __shfl_sync(grp.mask, incl, G - 1, G);
    carry = ALPHA ? carry * total : carry + total;
    const T w = valid ? composite_sample_out<T, ALPHA>(p, i, s, run, opacity, depth) : T(0);
    const T* v = p.values + i * C;
    if (CT > 0) {
      PE_COMPOSITE_UNROLL
      for (int c = 0; c < CT; ++c)
        if (c < C && valid) reg[c] += w * v[c];
    } else {
      for (int c = 0; c < C; ++c) {  // the chunk's sum per channel, added by lane 0
        const T part = group_sum(grp, valid ? w * v[c] : T(0));
        if (grp.lane == 0) acc[c] += part;
      }
    }
  }
  opacity = group_sum(grp, opacity);
  depth = group_sum(grp, depth);
  if (CT > 0) {
    PE_COMPOSITE_UNROLL
    for (int c = 0; c < CT; ++c)
      if (c < C) reg[c] = group_sum(grp, reg[c]);
  }
  if (grp.lane == 0) {
    if (CT > 0) {
      PE_COMPOSITE_UNROLL
      for (int c = 0; c < CT; ++c)
        if (c < C) acc[c] = reg[c];
    }
    p.opacity[r] = opacity;
    p.depth[r] = depth;
  }
}

template <typename T, int CT, bool ALPHA>
__global__ void composite_bwd_kernel(int64_t R, int64_t S, int nc, int G, const CompositeBwdPtrs<T> p) {
  const Group grp = make_group(G);
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / G;
  if (r >= R) return;  // the whole group
  const int C = composite_channels<CT>(nc);
  int64_t begin, end;
  composite_ray_range(p.packed_info, r, S, begin, end);
  if (begin >= end) return;  // the whole group: nothing to write
  const T* g_acc = p.g_acc + r * C;
  T g_reg[CT > 0 ? CT : 1];
  PE_COMPOSITE_UNROLL
  for (int c = 0; c < (CT > 0 ? CT : 1); ++c) g_reg[c] = CT > 0 && c < C ? g_acc[c] : T(0);
  const T g_op = p.g_opacity[r], g_depth = p.g_depth[r];
  const bool need_x = p.grad_x != nullptr;
  T carry = T(0);  // U of the last sample of the chunk: the suffix from the chunk after it
  for (int64_t base = begin + (end - 1 - begin) / G * G; base >= begin; base -= G) {
    const int64_t k = base + grp.lane;
    const bool valid = k < end;
    CompositeBwdSample<T> s{T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
    if (valid) s = composite_load(p, k, need_x);
    const T dt = s.t1 - s.t0;
    T alpha, one_minus;
    composite_alpha<T, ALPHA>(s.x, dt, alpha, one_minus);
    const T w = s.trans * alpha;
    const T g = composite_weight_grad<T, CT>(s, g_op, g_depth, g_reg, g_acc, p.values + k * C, C, need_x && valid);
    if (p.grad_values && valid) composite_value_grads<T, CT>(p.grad_values + k * C, w, g_reg, g_acc, C);
    if (need_x) {
      // V_k = a_k + b_k V_{k+1} over the chunk's lanes from the right (lanes past the ray are the
      // identity map), then through the carry; U_k = V_{k+1}.
      T a = valid ? g * alpha + s.gt : T(0), b = valid ? one_minus : T(1);
      for (int o = 1; o < G; o *= 2) {
        const T a2 = __shfl_down_sync(grp.mask, a, o, G), b2 = __shfl_down_sync(grp.mask, b, o, G);
        if (grp.lane + o < G) {
          a = a + b * a2;
          b = b * b2;
        }
      }
      const T V = a + b * carry;
      const T next = __shfl_down_sync(grp.mask, V, 1, G);
      const T U = grp.lane == G - 1 ? carry : next;
      if (valid) p.grad_x[k] = composite_x_grad<T, ALPHA>(s, dt, one_minus, g, U);
      carry = __shfl_sync(grp.mask, V, 0, G);
    }
  }
}

// G: the smallest power of two >= the mean samples per ray, at most 32.
int group_size(int64_t R, int64_t S) {
  int G = 1;
  while (G < 32 && static_cast<int64_t>(G) * R < S) G *= 2;
  return G;
}

unsigned blocks(int64_t R, int G) { return static_cast<unsigned>((R * G + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
int composite_fwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeFwdPtrs<T>& p,
                  cudaStream_t stream) {
  if (R == 0) return 0;
  const int G = group_size(R, S);
  dispatch_composite(C, alpha_mode, [&](auto ct, auto alpha) {
    composite_fwd_kernel<T, decltype(ct)::value, decltype(alpha)::value>
        <<<blocks(R, G), kThreads, 0, stream>>>(R, S, C, G, p);
  });
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int composite_bwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeBwdPtrs<T>& p,
                  cudaStream_t stream) {
  if (R == 0 || (p.grad_x == nullptr && p.grad_values == nullptr)) return 0;
  const int G = group_size(R, S);
  dispatch_composite(C, alpha_mode, [&](auto ct, auto alpha) {
    composite_bwd_kernel<T, decltype(ct)::value, decltype(alpha)::value>
        <<<blocks(R, G), kThreads, 0, stream>>>(R, S, C, G, p);
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
