// CPU kernels of avg_voxelize and trilinear_devoxelize: OpenMP loops over the per-point maths of
// pyengine/voxelize.h.
//
// Work split: mostly one (b, c) row per iteration, so that the row of the grid (R^3 values) stays
// in cache while the batch's points read or add to it; the corners of every point are computed
// once beforehand (corner_table). Reductions into voxels (voxelize forward, the grid gradient)
// thus add the points of a row in order (n ascending, then the corners): no atomics, and every
// run and thread count gives the same bits. The coordinate gradient, which sums over the channels
// per point, takes blocks of points instead.
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
  // the occupied voxels of each batch (at most N), so that the division touches only those
  std::vector<int32_t> occupied(B * N);
  std::vector<int64_t> n_occupied(B);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    int64_t m = 0;
    for (int64_t n = 0; n < N; ++n) {
      const int32_t v = voxel_of_point(coords + b * 3 * N, N, n, R);
      idx[b * N + n] = v;
      if (counts[b * V + v]++ == 0) occupied[b * N + m++] = v;
    }
    n_occupied[b] = m;
  }
#pragma omp parallel for schedule(static)
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const int64_t b = bc / C;
    const int32_t* ib = idx + b * N;
    const int32_t* cb = counts + b * V;
    const T* f = features + bc * N;
    T* g = grid + bc * V;  // zeroed by the caller
    for (int64_t n = 0; n < N; ++n) g[ib[n]] += f[n];
    for (int64_t j = 0; j < n_occupied[b]; ++j) {
      const int32_t v = occupied[b * N + j];
      if (cb[v] > 1) g[v] /= static_cast<T>(cb[v]);
    }
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

// The corners of every point: voxel and weight, [B, N, 8] each.
template <typename T>
void corner_table(int64_t B, int64_t N, int R, const T* coords, int32_t* vox, T* wts) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B * N; ++i) {
    DevoxAxis<T> a[3];
    devox_axes(coords + (i / N) * 3 * N, N, i % N, R, a);
    for (int k = 0; k < 8; ++k) vox[i * 8 + k] = devox_corner(a, k, R, wts[i * 8 + k]);
  }
}

// One (b, c) row per iteration: the row of the grid (R^3 values) stays in cache while all the
// batch's points read it.
template <typename T>
void trilinear_devoxelize_fwd(int64_t B, int64_t C, int64_t N, int R, const T* grid, const T* coords, T* out) {
  const int64_t V = static_cast<int64_t>(R) * R * R;
  std::vector<int32_t> vox(B * N * 8);
  std::vector<T> wts(B * N * 8);
  corner_table(B, N, R, coords, vox.data(), wts.data());
#pragma omp parallel for schedule(static)
  for (int64_t bc = 0; bc < B * C; ++bc) {
    const int64_t b = bc / C;
    const int32_t* vb = vox.data() + b * N * 8;
    const T* wb = wts.data() + b * N * 8;
    const T* g = grid + bc * V;
    T* o = out + bc * N;
    for (int64_t n = 0; n < N; ++n) {
      T s = T(0);
      for (int k = 0; k < 8; ++k) s += wb[n * 8 + k] * g[vb[n * 8 + k]];
      o[n] = s;
    }
  }
}

// The coordinate gradient sums over the channels per point: blocks of kBlock points of one batch
// per iteration, the corners and their derivatives in stack arrays, the channels swept in order.
// The grid gradient: one (b, c) row per iteration, as the forward.
template <typename T>
void trilinear_devoxelize_bwd(int64_t B, int64_t C, int64_t N, int R, const T* g_out, const T* grid, const T* coords,
                              T* g_grid, T* g_coords) {
  const int64_t V = static_cast<int64_t>(R) * R * R, blocks = (N + kBlock - 1) / kBlock;
  if (g_coords) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < B * blocks; ++i) {
      const int64_t b = i / blocks, n0 = (i % blocks) * kBlock, m = std::min(kBlock, N - n0);
      int32_t v[kBlock][8];
      T dw[kBlock][8][3];
      for (int64_t j = 0; j < m; ++j) {
        DevoxAxis<T> a[3];
        devox_axes(coords + b * 3 * N, N, n0 + j, R, a);
        for (int k = 0; k < 8; ++k) {
          T w;
          v[j][k] = devox_corner(a, k, R, w, dw[j][k]);
        }
      }
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
  }
  if (!g_grid) return;
  std::vector<int32_t> vox(B * N * 8);
  std::vector<T> wts(B * N * 8);
  corner_table(B, N, R, coords, vox.data(), wts.data());
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
