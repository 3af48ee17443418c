// CPU kernels of rasterize and interpolate: OpenMP loops over the per-pixel maths of
// pyengine/rasterize.h, the same functions the CUDA kernels run.
//
// Floating-point contraction is off for this translation unit (before any include, so that every
// function in it, inlined or not, is compiled alike): coverage and depth must round every product
// as the PyTorch reference does (see the header comment of pyengine/rasterize.h).
//
// rasterize forward. The image is cut into bands of kBand rows; one band of one image per
// iteration (dynamically scheduled: bands differ in work). The iteration owns its band's rows of
// rast and a float32 depth row buffer, and walks the triangles in id order, each over its bounding
// box (computed once per call, rast_box) clipped to the band; a triangle replaces the pixel's
// winner only when strictly nearer, so equal depths keep the smaller id. No atomics, no
// dependence on the thread count; the work is the triangles' box areas plus T checks per band,
// not H W T.
//
// rasterize backward, deterministic. One triangle per iteration gathers the gradient of the
// pixels it won (rast's id channel) over its bounding box, in pixel order, into a per-triangle
// row of 12 values; then, per image, the triangles' rows are added into grad_pos in id order. Every
// sum has a fixed order whatever the number of threads.
//
// interpolate backward, deterministic. grad_rast is per pixel. grad_attr: each iteration owns a
// range of vertices of one attribute batch, walks every pixel of the images that read that batch
// in order, and adds the contributions to its own vertices only, so each vertex's sum runs in
// pixel order whatever the partition.
#include "pyengine/no_contract.h"  // first: see there

#include "pyengine/rasterize.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace pe {
namespace cpu {
namespace {

constexpr int32_t kBand = 16;  // rows per band of the forward

template <typename T>
std::vector<T> centres(int32_t n) {
  std::vector<T> c(n);
  for (int32_t i = 0; i < n; ++i) c[i] = rast_centre<T>(i, n);
  return c;
}

// Bounding boxes of all B * n_tri triangles.
template <typename T>
std::vector<RastBox> boxes(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W, const T* pos,
                           const int64_t* tri) {
  std::vector<RastBox> box(B * n_tri);
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < B * n_tri; ++bt) {
    const int64_t b = bt / n_tri, t = bt % n_tri;
    box[bt] = rast_box(pos + b * V * 4, V, tri + 3 * t, H, W);
  }
  return box;
}

}  // namespace

template <typename T>
void rasterize_fwd(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W, const T* pos, const int64_t* tri,
                   T* rast) {
  const int64_t HW = int64_t(H) * W;
  std::fill(rast, rast + B * HW * 4, T(0));
  if (B * HW == 0 || n_tri == 0) return;
  const std::vector<RastBox> box = boxes(B, V, n_tri, H, W, pos, tri);
  const std::vector<T> xs = centres<T>(W), ys = centres<T>(H);
  const int64_t n_bands = (H + kBand - 1) / kBand;
#pragma omp parallel
  {
    std::vector<float> depth(int64_t(kBand) * W);
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < B * n_bands; ++job) {
      const int64_t b = job / n_bands;
      const int32_t r0 = static_cast<int32_t>(job % n_bands) * kBand, r1 = std::min(H, r0 + kBand);
      std::fill(depth.begin(), depth.end(), std::numeric_limits<float>::infinity());
      const T* pb = pos + b * V * 4;
      T* rb = rast + b * HW * 4;
      for (int64_t t = 0; t < n_tri; ++t) {
        const RastBox& bx = box[b * n_tri + t];
        const int32_t y0 = std::max(bx.y0, r0), y1 = std::min(bx.y1, r1 - 1);
        if (y0 > y1 || bx.x0 > bx.x1) continue;
        const T *p0 = pb + 4 * tri[3 * t], *p1 = pb + 4 * tri[3 * t + 1], *p2 = pb + 4 * tri[3 * t + 2];
        for (int32_t y = y0; y <= y1; ++y) {
          for (int32_t x = bx.x0; x <= bx.x1; ++x) {
            T u, v, zw;
            if (!rast_eval(p0, p1, p2, xs[x], ys[y], u, v, zw)) continue;
            const float z = rast_depth(zw);
            float& best = depth[int64_t(y - r0) * W + x];
            if (!(z < best)) continue;  // an equal depth keeps the earlier (smaller) id
            best = z;
            T* o = rb + (int64_t(y) * W + x) * 4;
            o[0] = u;
            o[1] = v;
            o[2] = zw;
            o[3] = static_cast<T>(t + 1);
          }
        }
      }
    }
  }
}

template <typename T>
void rasterize_bwd(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W, const T* g_rast, const T* pos,
                   const int64_t* tri, const T* rast, T* grad_pos) {
  const int64_t HW = int64_t(H) * W;
  if (B * HW == 0 || n_tri == 0 || V == 0) return;
  const std::vector<RastBox> box = boxes(B, V, n_tri, H, W, pos, tri);
  const std::vector<T> xs = centres<T>(W), ys = centres<T>(H);
  std::vector<T> tri_grad(B * n_tri * 12);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t bt = 0; bt < B * n_tri; ++bt) {
    const int64_t b = bt / n_tri, t = bt % n_tri;
    T acc[12] = {};
    const RastBox& bx = box[bt];
    if (!bx.empty()) {
      const T* pb = pos + b * V * 4;
      const T *p0 = pb + 4 * tri[3 * t], *p1 = pb + 4 * tri[3 * t + 1], *p2 = pb + 4 * tri[3 * t + 2];
      for (int32_t y = bx.y0; y <= bx.y1; ++y) {
        for (int32_t x = bx.x0; x <= bx.x1; ++x) {
          const int64_t px = (b * HW + int64_t(y) * W + x) * 4;
          if (rast_triangle(rast[px + 3], n_tri) != t) continue;
          T g[12];
          rast_grad(p0, p1, p2, xs[x], ys[y], g_rast[px], g_rast[px + 1], g_rast[px + 2], g);
          for (int j = 0; j < 12; ++j) acc[j] += g[j];
        }
      }
    }
    std::copy(acc, acc + 12, tri_grad.data() + bt * 12);
  }
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < n_tri; ++t) {
      if (box[b * n_tri + t].empty()) continue;  // also every triangle with an index out of range
      const T* g = tri_grad.data() + (b * n_tri + t) * 12;
      for (int k = 0; k < 3; ++k) {
        T* dst = grad_pos + (b * V + tri[3 * t + k]) * 4;
        for (int j = 0; j < 4; ++j) dst[j] += g[4 * k + j];
      }
    }
  }
}

template <typename T>
void interpolate_fwd(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P, const T* attr,
                     const T* rast, const int64_t* tri, T* out) {
#pragma omp parallel for schedule(static)
  for (int64_t bp = 0; bp < B * P; ++bp) {
    T* o = out + bp * C;
    const T* r = rast + bp * 4;
    const int64_t t = rast_triangle(r[3], n_tri);
    const int64_t i0 = t < 0 ? -1 : tri[3 * t], i1 = t < 0 ? -1 : tri[3 * t + 1], i2 = t < 0 ? -1 : tri[3 * t + 2];
    if (t < 0 || i0 < 0 || i0 >= V || i1 < 0 || i1 >= V || i2 < 0 || i2 >= V) {
      std::fill(o, o + C, T(0));
      continue;
    }
    const T* ab = attr + (Ba == 1 ? 0 : bp / P) * V * C;
    const T *a0 = ab + i0 * C, *a1 = ab + i1 * C, *a2 = ab + i2 * C;
    for (int64_t c = 0; c < C; ++c) o[c] = interp_value(r[0], r[1], a0[c], a1[c], a2[c]);
  }
}

template <typename T>
void interpolate_bwd(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P, const T* g_out,
                     const T* attr, const T* rast, const int64_t* tri, T* grad_attr, T* grad_rast) {
  // the triangle's vertices at a pixel, or false (empty pixel, index out of range)
  const auto corners = [&](int64_t bp, int64_t* i) {
    const int64_t t = rast_triangle(rast[bp * 4 + 3], n_tri);
    if (t < 0) return false;
    for (int k = 0; k < 3; ++k) {
      i[k] = tri[3 * t + k];
      if (i[k] < 0 || i[k] >= V) return false;
    }
    return true;
  };
  if (grad_rast) {
#pragma omp parallel for schedule(static)
    for (int64_t bp = 0; bp < B * P; ++bp) {
      T* gr = grad_rast + bp * 4;
      int64_t i[3];
      T gu = T(0), gv = T(0);
      if (corners(bp, i)) {
        const T* ab = attr + (Ba == 1 ? 0 : bp / P) * V * C;
        const T* g = g_out + bp * C;
        for (int64_t c = 0; c < C; ++c) {
          const T a2 = ab[i[2] * C + c];
          gu += g[c] * (ab[i[0] * C + c] - a2);
          gv += g[c] * (ab[i[1] * C + c] - a2);
        }
      }
      gr[0] = gu;
      gr[1] = gv;
      gr[2] = T(0);
      gr[3] = T(0);
    }
  }
  if (grad_attr && V > 0 && C > 0) {
    // vertex ranges per attribute batch: enough jobs for every thread
    const int64_t per_batch = std::max<int64_t>(1, (omp_get_max_threads() + Ba - 1) / Ba);
    const int64_t chunk = (V + per_batch - 1) / per_batch;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t job = 0; job < Ba * per_batch; ++job) {
      const int64_t ba = job / per_batch, v0 = (job % per_batch) * chunk, v1 = std::min(V, v0 + chunk);
      if (v0 >= v1) continue;
      T* ga = grad_attr + ba * V * C;
      const int64_t b0 = Ba == 1 ? 0 : ba, b1 = Ba == 1 ? B : ba + 1;  // the images that read batch ba
      for (int64_t bp = b0 * P; bp < b1 * P; ++bp) {
        int64_t i[3];
        if (!corners(bp, i)) continue;
        if ((i[0] < v0 || i[0] >= v1) && (i[1] < v0 || i[1] >= v1) && (i[2] < v0 || i[2] >= v1)) continue;
        const T u = rast[bp * 4], v = rast[bp * 4 + 1];
        const T w[3] = {u, v, T(1) - u - v};
        const T* g = g_out + bp * C;
        for (int k = 0; k < 3; ++k) {
          if (i[k] < v0 || i[k] >= v1) continue;
          T* dst = ga + i[k] * C;
          for (int64_t c = 0; c < C; ++c) dst[c] += w[k] * g[c];
        }
      }
    }
  }
}

#define PE_INSTANTIATE(T)                                                                                        \
  template void rasterize_fwd<T>(int64_t, int64_t, int64_t, int32_t, int32_t, const T*, const int64_t*, T*);     \
  template void rasterize_bwd<T>(int64_t, int64_t, int64_t, int32_t, int32_t, const T*, const T*, const int64_t*, \
                                 const T*, T*);                                                                  \
  template void interpolate_fwd<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const T*, const T*,     \
                                   const int64_t*, T*);                                                          \
  template void interpolate_bwd<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const T*, const T*,     \
                                   const T*, const int64_t*, T*, T*);
PE_INSTANTIATE(float)
PE_INSTANTIATE(double)
#undef PE_INSTANTIATE

}  // namespace cpu
}  // namespace pe
