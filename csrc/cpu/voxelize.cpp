// CPU kernels of avg_voxelize and trilinear_devoxelize: OpenMP loops over the per-point maths of
// pyengine/voxelize.h.
//
// Work split. Gathers (devoxelize forward, the coordinate gradient, voxelize backward) own their
// outputs per point: blocks of kBlock points of one batch per iteration, the corners computed
// once per point into stack arrays and then swept over the channels. Reductions into voxels
// (voxelize forward, the grid gradient) give each (b, c) row of the grid to one iteration, which
// adds the points in order (n ascending, then the corners): no atomics, and every run and thread
// count gives the same bits.
#include <algorithm>
#include <vector>

#include "pyengine/voxelize.h"

namespace pe {
namespace cpu {
namespace {
constexpr int64_t kBlock = 64;
}  // namespace

template <typename T>
void avg_voxelize_fwd(int64_t B, int64_t C, int64_t N, int R, const T* features, const int32_t* coords, T* grid,
                      int32_t* idx, int32_t* counts) {
  const int64_t V = static_cast<int64_t>(R) * R * R;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t n = 0; n < N; ++n) {
      const int32_t v = voxel_of_point(coords + b * 3 * N, N, n, R);
      idx[b * N + n] = v;
      ++counts[b * V + v];
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const int64_t b = bc / C;
    const int32_t* ib = idx + b * N;
    const int32_t* cb = counts + b * V;
    const T* f = features + bc * N;
    T* g = grid + bc * V;
    for (int64_t v = 0; v < V; ++v) g[v] = T(0);
    for (int64_t n = 0; n < N; ++n) g[ib[n]] += f[n];
    for (int64_t v = 0; v < V; ++v)
      if (cb[v] > 1) g[v] /= static_cast<T>(cb[v]);
  }
}

template <typename T>
void avg_voxelize_bwd(int64_t B, int64_t C, int64_t N, int R, const T* g_grid, const int32_t* idx,
                      const int32_t* counts, T* g_features) {
  const int64_t V = static_cast<int64_t>(R) * R * R;
#pragma omp parallel for schedule(static)
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const int64_t b = bc / C;
    const int32_t* ib = idx + b * N;
    const int32_t* cb = counts + b * V;
    const T* g = g_grid + bc * V;
    T* out = g_features + bc * N;
    for (int64_t n = 0; n < N; ++n) out[n] = g[ib[n]] / static_cast<T>(cb[ib[n]]);
  }
}

template <typename T>
void trilinear_devoxelize_fwd(int64_t B, int64_t C, int64_t N, int R, const T* grid, const T* coords, T* out) {
  const int64_t V = static_cast<int64_t>(R) * R * R, blocks = (N + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B * blocks; ++i) {
    const int64_t b = i / blocks, n0 = (i % blocks) * kBlock, m = std::min(kBlock, N - n0);
    int32_t vox[kBlock][8];
    T w[kBlock][8];
    for (int64_t j = 0; j < m; ++j) {
      DevoxAxis<T> a[3];
      devox_axes(coords + b * 3 * N, N, n0 + j, R, a);
      for (int k = 0; k < 8; ++k) vox[j][k] = devox_corner(a, k, R, w[j][k]);
    }
    for (int64_t c = 0; c < C; ++c) {
      const T* g = grid + (b * C + c) * V;
      T* o = out + (b * C + c) * N + n0;
      for (int64_t j = 0; j < m; ++j) {
        T s = T(0);
        for (int k = 0; k < 8; ++k) s += w[j][k] * g[vox[j][k]];
        o[j] = s;
      }
    }
  }
}

template <typename T>
void trilinear_devoxelize_bwd(int64_t B, int64_t C, int64_t N, int R, const T* g_out, const T* grid, const T* coords,
                              T* g_grid, T* g_coords) {
  const int64_t V = static_cast<int64_t>(R) * R * R, blocks = (N + kBlock - 1) / kBlock;
  // the corners of every point, for the grid gradient's rows
  std::vector<int32_t> vox(g_grid ? B * N * 8 : 0);
  std::vector<T> wts(g_grid ? B * N * 8 : 0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B * blocks; ++i) {
    const int64_t b = i / blocks, n0 = (i % blocks) * kBlock, m = std::min(kBlock, N - n0);
    int32_t v[kBlock][8];
    T w[kBlock][8], dw[kBlock][8][3];
    for (int64_t j = 0; j < m; ++j) {
      DevoxAxis<T> a[3];
      devox_axes(coords + b * 3 * N, N, n0 + j, R, a);
      for (int k = 0; k < 8; ++k) v[j][k] = devox_corner(a, k, R, w[j][k], dw[j][k]);
      if (g_grid) {
        const int64_t e = (b * N + n0 + j) * 8;
        for (int k = 0; k < 8; ++k) {
          vox[e + k] = v[j][k];
          wts[e + k] = w[j][k];
        }
      }
    }
    if (!g_coords) continue;
    T acc[kBlock][3] = {};
    for (int64_t c = 0; c < C; ++c) {
      const T* g = grid + (b * C + c) * V;
      const T* go = g_out + (b * C + c) * N + n0;
      for (int64_t j = 0; j < m; ++j) {
        T d[3] = {T(0), T(0), T(0)};
        for (int k = 0; k < 8; ++k) {
          const T val = g[v[j][k]];
          for (int ax = 0; ax < 3; ++ax) d[ax] += dw[j][k][ax] * val;
        }
        for (int ax = 0; ax < 3; ++ax) acc[j][ax] += go[j] * d[ax];
      }
    }
    for (int ax = 0; ax < 3; ++ax)
      for (int64_t j = 0; j < m; ++j) g_coords[(b * 3 + ax) * N + n0 + j] = acc[j][ax];
  }
  if (!g_grid) return;
#pragma omp parallel for schedule(static)
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const int64_t b = bc / C;
    const int32_t* vb = vox.data() + b * N * 8;
    const T* wb = wts.data() + b * N * 8;
    const T* go = g_out + bc * N;
    T* gg = g_grid + bc * V;
    for (int64_t n = 0; n < N; ++n)
      for (int k = 0; k < 8; ++k) gg[vb[n * 8 + k]] += wb[n * 8 + k] * go[n];
  }
}

#define PE_VOXELIZE_INSTANTIATE(T)                                                                                   \
  template void avg_voxelize_fwd<T>(int64_t, int64_t, int64_t, int, const T*, const int32_t*, T*, int32_t*,         \
                                    int32_t*);                                                                       \
  template void avg_voxelize_bwd<T>(int64_t, int64_t, int64_t, int, const T*, const int32_t*, const int32_t*, T*);  \
  template void trilinear_devoxelize_fwd<T>(int64_t, int64_t, int64_t, int, const T*, const T*, T*);                \
  template void trilinear_devoxelize_bwd<T>(int64_t, int64_t, int64_t, int, const T*, const T*, const T*, T*, T*);
PE_VOXELIZE_INSTANTIATE(float)
PE_VOXELIZE_INSTANTIATE(double)
#undef PE_VOXELIZE_INSTANTIATE

}  // namespace cpu
}  // namespace pe
