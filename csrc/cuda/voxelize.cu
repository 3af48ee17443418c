// CUDA kernels of avg_voxelize and trilinear_devoxelize over the per-point maths of
// pyengine/voxelize.h.
//
// Work split: one thread per (b, c, n) for everything per point and channel (coalesced along n,
// the fastest dimension of features, out and coords), one thread per (b, n) for what is per
// point only (voxel indices and counts, the corner keys, the coordinate gradient, which sums over
// the channels in order), and one thread per (b, c, v) for the per-voxel passes. All loops are
// grid-stride over an int64 range, so any size fits a capped grid.
//
// Reductions into voxels come in two forms (see voxelize.h): atomicAdd into the zeroed grid
// (the threads of one voxel add in whatever order they run: the last bits vary between runs), or
// the deterministic sorted-segment gather, where the thread of (b, c, v) walks voxel v's segment
// of the host's stable sort in order. The counts are integer atomics, exact in any order.
#include <cuda_runtime.h>

#include "pyengine/cuda_grid.h"

#include "pyengine/voxelize.h"

namespace pe {
namespace cuda {
namespace {

__global__ void avg_voxelize_index_kernel(int64_t B, int64_t N, int R, const int32_t* coords, int32_t* idx,
                                          int32_t* counts) {
  const int64_t V = int64_t(R) * R * R;
  PE_GRID_LOOP(i, B * N) {
    const int64_t b = i / N, n = i % N;
    const int32_t v = voxel_of_point(coords + b * 3 * N, N, n, R);
    idx[i] = v;
    atomicAdd(counts + b * V + v, 1);
  }
}

// grid[b, c, idx[b, n]] += f[b, c, n]
template <typename T>
__global__ void avg_voxelize_scatter_kernel(int64_t B, int64_t C, int64_t N, int64_t V, const T* features,
                                            const int32_t* idx, T* grid) {
  PE_GRID_LOOP(i, B * C * N) {
    const int64_t bc = i / N, n = i % N, b = bc / C;
    atomicAdd(grid + bc * V + idx[b * N + n], features[i]);
  }
}

template <typename T>
__global__ void avg_voxelize_divide_kernel(int64_t B, int64_t C, int64_t V, const int32_t* counts, T* grid) {
  PE_GRID_LOOP(i, B * C * V) {
    const int64_t b = i / (C * V), v = i % V;
    const int32_t k = counts[b * V + v];
    if (k > 1) grid[i] /= static_cast<T>(k);
  }
}

// The deterministic forward: voxel v of (b, c) sums its segment of the sorted points in order.
template <typename T>
__global__ void avg_voxelize_segment_kernel(int64_t B, int64_t C, int64_t N, int64_t V, const T* features,
                                            const int32_t* counts, const int64_t* order, const int64_t* start,
                                            T* grid) {
  PE_GRID_LOOP(i, B * C * V) {
    const int64_t bc = i / V, v = i % V, b = bc / C;
    const int64_t* s = start + b * (V + 1);
    const int64_t* o = order + b * N;
    const T* f = features + bc * N;
    T sum = T(0);
    for (int64_t j = s[v]; j < s[v + 1]; ++j) sum += f[o[j]];
    const int32_t k = counts[b * V + v];
    grid[i] = k > 1 ? sum / static_cast<T>(k) : sum;
  }
}

template <typename T>
__global__ void avg_voxelize_bwd_kernel(int64_t B, int64_t C, int64_t N, int64_t V, const T* g_grid,
                                        const int32_t* idx, const int32_t* counts, T* g_features) {
  PE_GRID_LOOP(i, B * C * N) {
    const int64_t bc = i / N, n = i % N, b = bc / C;
    const int32_t v = idx[b * N + n];
    g_features[i] = g_grid[bc * V + v] / static_cast<T>(counts[b * V + v]);
  }
}

template <typename T>
__global__ void devoxelize_fwd_kernel(int64_t B, int64_t C, int64_t N, int R, const T* grid, const T* coords,
                                      T* out) {
  const int64_t V = int64_t(R) * R * R;
  PE_GRID_LOOP(i, B * C * N) {
    const int64_t bc = i / N, n = i % N, b = bc / C;
    DevoxAxis<T> a[3];
    devox_axes(coords + b * 3 * N, N, n, R, a);
    const T* g = grid + bc * V;
    T s = T(0);
    for (int k = 0; k < 8; ++k) {
      T w;
      const int32_t v = devox_corner(a, k, R, w);
      s += w * g[v];
    }
    out[i] = s;
  }
}

template <typename T>
__global__ void devoxelize_keys_kernel(int64_t B, int64_t N, int R, const T* coords, int32_t* keys) {
  PE_GRID_LOOP(i, B * N) {
    const int64_t b = i / N, n = i % N;
    DevoxAxis<T> a[3];
    devox_axes(coords + b * 3 * N, N, n, R, a);
    for (int k = 0; k < 8; ++k) {
      T w;
      keys[i * 8 + k] = devox_corner(a, k, R, w);
    }
  }
}

template <typename T>
__global__ void devoxelize_grid_atomic_kernel(int64_t B, int64_t C, int64_t N, int R, const T* g_out,
                                              const T* coords, T* g_grid) {
  const int64_t V = int64_t(R) * R * R;
  PE_GRID_LOOP(i, B * C * N) {
    const int64_t bc = i / N, n = i % N, b = bc / C;
    DevoxAxis<T> a[3];
    devox_axes(coords + b * 3 * N, N, n, R, a);
    const T go = g_out[i];
    for (int k = 0; k < 8; ++k) {
      T w;
      const int32_t v = devox_corner(a, k, R, w);
      atomicAdd(g_grid + bc * V + v, w * go);
    }
  }
}

// The deterministic grid gradient: voxel v of (b, c) walks its segment of the sorted corner keys
// (key 8 n + k: corner k of point n) in order and recomputes each corner's weight.
template <typename T>
__global__ void devoxelize_grid_segment_kernel(int64_t B, int64_t C, int64_t N, int R, const T* g_out,
                                               const T* coords, const int64_t* order, const int64_t* start,
                                               T* g_grid) {
  const int64_t V = int64_t(R) * R * R;
  PE_GRID_LOOP(i, B * C * V) {
    const int64_t bc = i / V, v = i % V, b = bc / C;
    const int64_t* s = start + b * (V + 1);
    const int64_t* o = order + b * N * 8;
    const T* go = g_out + bc * N;
    T sum = T(0);
    for (int64_t j = s[v]; j < s[v + 1]; ++j) {
      const int64_t n = o[j] >> 3;
      DevoxAxis<T> a[3];
      devox_axes(coords + b * 3 * N, N, n, R, a);
      T w;
      devox_corner(a, static_cast<int>(o[j] & 7), R, w);
      sum += w * go[n];
    }
    g_grid[i] = sum;
  }
}

// dL/d(x, y, z) of point (b, n), summed over the channels in order.
template <typename T>
__global__ void devoxelize_coords_kernel(int64_t B, int64_t C, int64_t N, int R, const T* g_out, const T* grid,
                                         const T* coords, T* g_coords) {
  const int64_t V = int64_t(R) * R * R;
  PE_GRID_LOOP(i, B * N) {
    const int64_t b = i / N, n = i % N;
    DevoxAxis<T> a[3];
    devox_axes(coords + b * 3 * N, N, n, R, a);
    int32_t v[8];
    T dw[8][3];
    for (int k = 0; k < 8; ++k) {
      T w;
      v[k] = devox_corner(a, k, R, w, dw[k]);
    }
    T acc[3] = {T(0), T(0), T(0)};
    for (int64_t c = 0; c < C; ++c) {
      const T* g = grid + (b * C + c) * V;
      const T go = g_out[(b * C + c) * N + n];
      T d[3] = {T(0), T(0), T(0)};
      for (int k = 0; k < 8; ++k) {
        const T val = g[v[k]];
        for (int ax = 0; ax < 3; ++ax) d[ax] += dw[k][ax] * val;
      }
      for (int ax = 0; ax < 3; ++ax) acc[ax] += go * d[ax];
    }
    for (int ax = 0; ax < 3; ++ax) g_coords[(b * 3 + ax) * N + n] = acc[ax];
  }
}

#undef PE_GRID_LOOP

int status() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

int avg_voxelize_index(int64_t B, int64_t N, int R, const int32_t* coords, int32_t* idx, int32_t* counts,
                       cudaStream_t stream) {
  if (B * N == 0) return 0;
  avg_voxelize_index_kernel<<<blocks(B * N), kThreads, 0, stream>>>(B, N, R, coords, idx, counts);
  return status();
}

template <typename T>
int avg_voxelize_fwd(int64_t B, int64_t C, int64_t N, int R, const T* features, const int32_t* idx,
                     const int32_t* counts, const int64_t* order, const int64_t* start, T* grid, cudaStream_t stream) {
  const int64_t V = int64_t(R) * R * R;
  if (B * C * V == 0) return 0;
  if (order) {
    avg_voxelize_segment_kernel<T><<<blocks(B * C * V), kThreads, 0, stream>>>(B, C, N, V, features, counts, order,
                                                                               start, grid);
    return status();
  }
  if (N == 0) return 0;
  avg_voxelize_scatter_kernel<T><<<blocks(B * C * N), kThreads, 0, stream>>>(B, C, N, V, features, idx, grid);
  if (const int err = status()) return err;
  avg_voxelize_divide_kernel<T><<<blocks(B * C * V), kThreads, 0, stream>>>(B, C, V, counts, grid);
  return status();
}

template <typename T>
int avg_voxelize_bwd(int64_t B, int64_t C, int64_t N, int R, const T* g_grid, const int32_t* idx,
                     const int32_t* counts, T* g_features, cudaStream_t stream) {
  if (B * C * N == 0) return 0;
  avg_voxelize_bwd_kernel<T><<<blocks(B * C * N), kThreads, 0, stream>>>(B, C, N, int64_t(R) * R * R, g_grid, idx,
                                                                        counts, g_features);
  return status();
}

template <typename T>
int trilinear_devoxelize_fwd(int64_t B, int64_t C, int64_t N, int R, const T* grid, const T* coords, T* out,
                             cudaStream_t stream) {
  if (B * C * N == 0) return 0;
  devoxelize_fwd_kernel<T><<<blocks(B * C * N), kThreads, 0, stream>>>(B, C, N, R, grid, coords, out);
  return status();
}

template <typename T>
int trilinear_devoxelize_keys(int64_t B, int64_t N, int R, const T* coords, int32_t* keys, cudaStream_t stream) {
  if (B * N == 0) return 0;
  devoxelize_keys_kernel<T><<<blocks(B * N), kThreads, 0, stream>>>(B, N, R, coords, keys);
  return status();
}

template <typename T>
int trilinear_devoxelize_bwd(int64_t B, int64_t C, int64_t N, int R, const T* g_out, const T* grid, const T* coords,
                             const int64_t* order, const int64_t* start, T* g_grid, T* g_coords, cudaStream_t stream) {
  const int64_t V = int64_t(R) * R * R;
  if (g_grid && order && B * C * V > 0) {
    devoxelize_grid_segment_kernel<T><<<blocks(B * C * V), kThreads, 0, stream>>>(B, C, N, R, g_out, coords, order,
                                                                                  start, g_grid);
    if (const int err = status()) return err;
  } else if (g_grid && B * C * N > 0) {
    devoxelize_grid_atomic_kernel<T><<<blocks(B * C * N), kThreads, 0, stream>>>(B, C, N, R, g_out, coords, g_grid);
    if (const int err = status()) return err;
  }
  if (g_coords && B * N > 0) {
    devoxelize_coords_kernel<T><<<blocks(B * N), kThreads, 0, stream>>>(B, C, N, R, g_out, grid, coords, g_coords);
    return status();
  }
  return 0;
}

#define PE_VOXELIZE_INSTANTIATE(T)                                                                                    \
  template int avg_voxelize_fwd<T>(int64_t, int64_t, int64_t, int, const T*, const int32_t*, const int32_t*,         \
                                   const int64_t*, const int64_t*, T*, cudaStream_t);                                \
  template int avg_voxelize_bwd<T>(int64_t, int64_t, int64_t, int, const T*, const int32_t*, const int32_t*, T*,     \
                                   cudaStream_t);                                                                    \
  template int trilinear_devoxelize_fwd<T>(int64_t, int64_t, int64_t, int, const T*, const T*, T*, cudaStream_t);    \
  template int trilinear_devoxelize_keys<T>(int64_t, int64_t, int, const T*, int32_t*, cudaStream_t);                \
  template int trilinear_devoxelize_bwd<T>(int64_t, int64_t, int64_t, int, const T*, const T*, const T*,             \
                                           const int64_t*, const int64_t*, T*, T*, cudaStream_t);
PE_VOXELIZE_INSTANTIATE(float)
PE_VOXELIZE_INSTANTIATE(double)
#undef PE_VOXELIZE_INSTANTIATE

}  // namespace cuda
}  // namespace pe
