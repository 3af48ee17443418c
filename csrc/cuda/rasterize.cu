// CUDA kernels of rasterize and interpolate over the shared maths in pyengine/rasterize.h.
//
// rasterize forward, three launches:
//   1. depth_small: one thread per (image, triangle). It computes the triangle's bounding box
//      (rast_box) and, when the box holds at most kSmallArea pixels, tests them itself: for each
//      covered pixel an atomicMin of the 64-bit key (float32 depth made order-preserving, high
//      half; triangle id, low half) into keys[b, y, x]. The minimum is exact and independent of
//      the order in which threads arrive, so the winner (nearest, then smallest id) is
//      deterministic. A larger box is appended to a work list instead (atomicAdd on n_large).
//   2. depth_large: blocks stride over that list; a block takes one triangle and its threads
//      stride over the box's pixels (a triangle that crosses w = 0 has the whole image as its box),
//      so one big triangle does not serialise on a single thread.
//   3. resolve: one thread per pixel reads its key and recomputes (u, v, z/w) of the winner with
//      the same rast_eval as the depth test, bit for bit, and writes the pixel's four channels.
// The caller fills keys with kRastEmpty and zeroes n_large. The list's length stays on the
// device: depth_large's grid is sized for the worst case and its blocks read the length, so there
// is no host synchronisation.
//
// rasterize backward: one thread per pixel recomputes the winner's barycentrics and adds the
// gradient of its 12 vertex coordinates into grad_pos with atomicAdd (neighbouring pixels share
// vertices; float atomics make the sums' order, hence the last bits, vary from run to run).
//
// interpolate: one thread per pixel and channel in the forward (coalesced over channels); one
// thread per pixel in the backward, which owns its row of grad_rast and adds into grad_attr with
// atomicAdd.
#include <cuda_runtime.h>

#include "pyengine/cuda_grid.h"
#include "pyengine/rasterize.h"

namespace pe {
namespace cuda {
namespace {

constexpr int64_t kSmallArea = 64;       // pixels a single thread tests itself
constexpr int kLargeThreads = 256;       // threads per block of depth_large
constexpr int64_t kMaxLargeBlocks = 4096;  // enough blocks to fill the device, striding the list

// Keys of one pixel: key(depth, t) when triangle t covers it.
template <typename T>
__device__ __forceinline__ void depth_test(const T* p0, const T* p1, const T* p2, int64_t t, int32_t x, int32_t y,
                                           int32_t H, int32_t W, uint64_t* keys_b) {
  T u, v, zw;
  if (!rast_eval(p0, p1, p2, rast_centre<T>(x, W), rast_centre<T>(y, H), u, v, zw)) return;
  atomicMin(reinterpret_cast<unsigned long long*>(keys_b + int64_t(y) * W + x),
            static_cast<unsigned long long>(rast_key(rast_depth(zw), t)));
}

template <typename T>
__global__ void rasterize_depth_small_kernel(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W,
                                             const T* __restrict__ pos, const int64_t* __restrict__ tri,
                                             uint64_t* keys, int64_t* large, int32_t* n_large) {
  PE_GRID_LOOP(bt, B * n_tri) {
    const int64_t b = bt / n_tri, t = bt % n_tri;
    const T* pb = pos + b * V * 4;
    const RastBox box = rast_box(pb, V, tri + 3 * t, H, W);
    if (box.empty()) continue;
    if (box.area() > kSmallArea) {
      large[atomicAdd(n_large, 1)] = bt;
      continue;
    }
    const T *p0 = pb + 4 * tri[3 * t], *p1 = pb + 4 * tri[3 * t + 1], *p2 = pb + 4 * tri[3 * t + 2];
    uint64_t* keys_b = keys + b * int64_t(H) * W;
    for (int32_t y = box.y0; y <= box.y1; ++y)
      for (int32_t x = box.x0; x <= box.x1; ++x) depth_test(p0, p1, p2, t, x, y, H, W, keys_b);
  }
}

template <typename T>
__global__ void rasterize_depth_large_kernel(int64_t V, int64_t n_tri, int32_t H, int32_t W,
                                             const T* __restrict__ pos, const int64_t* __restrict__ tri,
                                             uint64_t* keys, const int64_t* large, const int32_t* n_large) {
  const int32_t n = *n_large;
  for (int32_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t bt = large[i];
    const int64_t b = bt / n_tri, t = bt % n_tri;
    const T* pb = pos + b * V * 4;
    const RastBox box = rast_box(pb, V, tri + 3 * t, H, W);  // the same box as depth_small's
    const T *p0 = pb + 4 * tri[3 * t], *p1 = pb + 4 * tri[3 * t + 1], *p2 = pb + 4 * tri[3 * t + 2];
    uint64_t* keys_b = keys + b * int64_t(H) * W;
    const int32_t bw = box.x1 - box.x0 + 1;
    for (int64_t j = threadIdx.x; j < box.area(); j += blockDim.x) {
      const int32_t y = box.y0 + static_cast<int32_t>(j / bw), x = box.x0 + static_cast<int32_t>(j % bw);
      depth_test(p0, p1, p2, t, x, y, H, W, keys_b);
    }
  }
}

template <typename T>
__global__ void rasterize_resolve_kernel(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W,
                                         const T* __restrict__ pos, const int64_t* __restrict__ tri,
                                         const uint64_t* __restrict__ keys, T* __restrict__ rast) {
  const int64_t HW = int64_t(H) * W;
  PE_GRID_LOOP(i, B * HW) {
    const uint64_t key = keys[i];
    T out[4] = {T(0), T(0), T(0), T(0)};
    if (key != kRastEmpty) {
      const int64_t b = i / HW, t = static_cast<int64_t>(key & 0xffffffffu);
      const int32_t y = static_cast<int32_t>((i % HW) / W), x = static_cast<int32_t>(i % W);
      const T* pb = pos + b * V * 4;
      const T *p0 = pb + 4 * tri[3 * t], *p1 = pb + 4 * tri[3 * t + 1], *p2 = pb + 4 * tri[3 * t + 2];
      // covered: the depth test evaluated these very operands
      rast_eval(p0, p1, p2, rast_centre<T>(x, W), rast_centre<T>(y, H), out[0], out[1], out[2]);
      out[3] = static_cast<T>(t + 1);
    }
    for (int j = 0; j < 4; ++j) rast[i * 4 + j] = out[j];
  }
}

template <typename T>
__global__ void rasterize_bwd_kernel(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W,
                                     const T* __restrict__ g_rast, const T* __restrict__ pos,
                                     const int64_t* __restrict__ tri, const T* __restrict__ rast,
                                     T* __restrict__ grad_pos) {
  const int64_t HW = int64_t(H) * W;
  PE_GRID_LOOP(i, B * HW) {
    const int64_t t = rast_triangle(rast[i * 4 + 3], n_tri);
    if (t < 0) continue;
    const int64_t b = i / HW;
    const int64_t vi[3] = {tri[3 * t], tri[3 * t + 1], tri[3 * t + 2]};
    if (vi[0] < 0 || vi[0] >= V || vi[1] < 0 || vi[1] >= V || vi[2] < 0 || vi[2] >= V) continue;
    const int32_t y = static_cast<int32_t>((i % HW) / W), x = static_cast<int32_t>(i % W);
    const T* pb = pos + b * V * 4;
    T g[12];
    rast_grad(pb + 4 * vi[0], pb + 4 * vi[1], pb + 4 * vi[2], rast_centre<T>(x, W), rast_centre<T>(y, H),
              g_rast[i * 4], g_rast[i * 4 + 1], g_rast[i * 4 + 2], g);
    for (int k = 0; k < 3; ++k)
      for (int j = 0; j < 4; ++j) atomicAdd(grad_pos + (b * V + vi[k]) * 4 + j, g[4 * k + j]);
  }
}

// The triangle's vertices at pixel i, or false (empty pixel, index out of range).
__device__ __forceinline__ bool corners(int64_t t, int64_t V, const int64_t* tri, int64_t* vi) {
  if (t < 0) return false;
  for (int k = 0; k < 3; ++k) {
    vi[k] = tri[3 * t + k];
    if (vi[k] < 0 || vi[k] >= V) return false;
  }
  return true;
}

template <typename T>
__global__ void interpolate_fwd_kernel(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P,
                                       const T* __restrict__ attr, const T* __restrict__ rast,
                                       const int64_t* __restrict__ tri, T* __restrict__ out) {
  PE_GRID_LOOP(e, B * P * C) {
    const int64_t bp = e / C, c = e % C;
    const T* r = rast + bp * 4;
    int64_t vi[3];
    T value = T(0);
    if (corners(rast_triangle(r[3], n_tri), V, tri, vi)) {
      const T* ab = attr + (Ba == 1 ? 0 : bp / P) * V * C + c;
      value = interp_value(r[0], r[1], ab[vi[0] * C], ab[vi[1] * C], ab[vi[2] * C]);
    }
    out[e] = value;
  }
}

template <typename T>
__global__ void interpolate_bwd_kernel(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P,
                                       const T* __restrict__ g_out, const T* __restrict__ attr,
                                       const T* __restrict__ rast, const int64_t* __restrict__ tri,
                                       T* __restrict__ grad_attr, T* __restrict__ grad_rast) {
  PE_GRID_LOOP(bp, B * P) {
    const T* r = rast + bp * 4;
    int64_t vi[3];
    const bool hit = corners(rast_triangle(r[3], n_tri), V, tri, vi);
    const int64_t ba = Ba == 1 ? 0 : bp / P;
    const T* g = g_out + bp * C;
    T gu = T(0), gv = T(0);
    if (hit) {
      const T u = r[0], v = r[1], w[3] = {u, v, T(1) - u - v};
      const T* ab = attr + ba * V * C;
      for (int64_t c = 0; c < C; ++c) {
        const T gc = g[c];
        if (grad_rast) {
          const T a2 = ab[vi[2] * C + c];
          gu += gc * (ab[vi[0] * C + c] - a2);
          gv += gc * (ab[vi[1] * C + c] - a2);
        }
        if (grad_attr)
          for (int k = 0; k < 3; ++k) atomicAdd(grad_attr + (ba * V + vi[k]) * C + c, w[k] * gc);
      }
    }
    if (grad_rast) {
      T* gr = grad_rast + bp * 4;
      gr[0] = gu;
      gr[1] = gv;
      gr[2] = T(0);
      gr[3] = T(0);
    }
  }
}

}  // namespace

template <typename T>
int rasterize_fwd(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W, const T* pos, const int64_t* tri,
                  T* rast, uint64_t* keys, int64_t* large, int32_t* n_large, cudaStream_t stream) {
  const int64_t HW = int64_t(H) * W;
  if (B * HW == 0) return 0;
  if (n_tri > 0) {
    rasterize_depth_small_kernel<T><<<blocks(B * n_tri), kThreads, 0, stream>>>(B, V, n_tri, H, W, pos, tri, keys,
                                                                                 large, n_large);
    const int64_t lb = B * n_tri < kMaxLargeBlocks ? B * n_tri : kMaxLargeBlocks;
    rasterize_depth_large_kernel<T><<<static_cast<unsigned>(lb), kLargeThreads, 0, stream>>>(
        V, n_tri, H, W, pos, tri, keys, large, n_large);
  }
  rasterize_resolve_kernel<T><<<blocks(B * HW), kThreads, 0, stream>>>(B, V, n_tri, H, W, pos, tri, keys, rast);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int rasterize_bwd(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W, const T* g_rast, const T* pos,
                  const int64_t* tri, const T* rast, T* grad_pos, cudaStream_t stream) {
  const int64_t HW = int64_t(H) * W;
  if (B * HW == 0 || n_tri == 0 || V == 0) return 0;
  rasterize_bwd_kernel<T><<<blocks(B * HW), kThreads, 0, stream>>>(B, V, n_tri, H, W, g_rast, pos, tri, rast,
                                                                     grad_pos);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int interpolate_fwd(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P, const T* attr,
                    const T* rast, const int64_t* tri, T* out, cudaStream_t stream) {
  if (B * P * C == 0) return 0;
  interpolate_fwd_kernel<T><<<blocks(B * P * C), kThreads, 0, stream>>>(B, Ba, V, C, n_tri, P, attr, rast, tri,
                                                                          out);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int interpolate_bwd(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P, const T* g_out,
                    const T* attr, const T* rast, const int64_t* tri, T* grad_attr, T* grad_rast,
                    cudaStream_t stream) {
  if (B * P == 0 || (grad_attr == nullptr && grad_rast == nullptr)) return 0;
  interpolate_bwd_kernel<T><<<blocks(B * P), kThreads, 0, stream>>>(B, Ba, V, C, n_tri, P, g_out, attr, rast, tri,
                                                                      grad_attr, grad_rast);
  return static_cast<int>(cudaGetLastError());
}

#define PE_INSTANTIATE(T)                                                                                       \
  template int rasterize_fwd<T>(int64_t, int64_t, int64_t, int32_t, int32_t, const T*, const int64_t*, T*,      \
                                uint64_t*, int64_t*, int32_t*, cudaStream_t);                                   \
  template int rasterize_bwd<T>(int64_t, int64_t, int64_t, int32_t, int32_t, const T*, const T*, const int64_t*, \
                                const T*, T*, cudaStream_t);                                                    \
  template int interpolate_fwd<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const T*, const T*,    \
                                  const int64_t*, T*, cudaStream_t);                                            \
  template int interpolate_bwd<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const T*, const T*,    \
                                  const T*, const int64_t*, T*, T*, cudaStream_t);
PE_INSTANTIATE(float)
PE_INSTANTIATE(double)
#undef PE_INSTANTIATE

}  // namespace cuda
}  // namespace pe
