// Triangle rasterization (nvdiffrast's semantics, no OpenGL) and attribute interpolation: the
// per-triangle and per-pixel maths shared by the CPU and CUDA kernels.
//
// Semantics: pyengine/reference/rasterize.py is the specification. Per pixel centre (X, Y) and
// triangle with clip-space vertices p_k = (x_k, y_k, z_k, w_k):
//   a_k = x_k - X w_k,  c_k = y_k - Y w_k,  b = a x c,  s = b_0 + b_1 + b_2,
//   d = sum b_k w_k,  n = sum b_k z_k,  u = b_0 / s,  v = b_1 / s,  z/w = n / d,
// covered when s != 0, every b_k / s >= 0, d / s > 0, -1 <= z/w <= 1, and some w_k > 0.
// The nearest float32 depth wins, ties go to the smaller triangle id.
//
// Bit-identical results across backends. Every quantity above is computed with one rounding per
// operation in the reference's order; products go through rn_mul, which on the device is
// __fmul_rn / __dmul_rn: nvcc contracts a plain `a * b - c` into an FMA by default (-fmad=true),
// which would move a b_k by an ulp, enough to flip the coverage of a pixel centre that lies on an
// edge (a shared edge: both triangles then decide by depth) on the GPU only. Divisions use
// __fdiv_rn (double division is IEEE-rounded on the device anyway). csrc/cpu/rasterize.cpp turns
// contraction off for its translation unit. Pixel centres are (2 i + 1) / n - 1, computed the same
// way everywhere. The kernels therefore reproduce the reference's ids and values exactly, and the
// backward's gradients up to rounding.
//
// Work split (see csrc/cpu/rasterize.cpp and csrc/cuda/rasterize.cu): the forward tests each
// triangle against the pixel centres of its screen bounding box only (rast_box: the projected
// vertices' extent grown by half a pixel each side; the whole image for a triangle that crosses
// w = 0, whose projected vertices do not bound it; nothing for one wholly at w <= 0). The bounding
// box is the one place where the kernels could in principle disagree with the reference: a pixel
// centre more than half a pixel outside a triangle's projection that rounding alone makes
// "covered", which needs a triangle of near-zero screen area (a sliver whose edge functions cancel)
// and is not seen in practice.
//
// Memory layout: pos [B, V, 4] row-major (x, y, z, w); tri [T, 3] int64; rast [B, H, W, 4]
// (u, v, z/w, id + 1); attr [Ba, V, C] with Ba = 1 (shared by every image) or B; out [B, H, W, C].
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "pyengine/common.h"

namespace pe {

// ---------------------------------------------------------------------------------------------
// Rounding helpers (products and quotients: rn_mul / rn_div in pyengine/common.h).


// Nearest integer, ties to even (torch.round), for the id channel of a rast given by the user.
PE_HD float rast_rint(float a) {
#if defined(__CUDA_ARCH__)
  return rintf(a);
#else
  return std::rint(a);
#endif
}
PE_HD double rast_rint(double a) {
#if defined(__CUDA_ARCH__)
  return ::rint(a);
#else
  return std::rint(a);
#endif
}

// NDC coordinate of the centre of pixel i of n along an axis: (2 i + 1) / n - 1 (row 0 at y = -1).
template <typename T>
PE_HD T rast_centre(int64_t i, int64_t n) {
  return rn_div(static_cast<T>(2 * i + 1), static_cast<T>(n)) - T(1);
}

// ---------------------------------------------------------------------------------------------
// Per pixel: coverage, barycentrics, depth.

// The homogeneous barycentrics of a triangle at one pixel centre, with their ingredients (the
// backward needs a and c).
template <typename T>
struct RastHom {
  T a[3], c[3], b[3], s, d, n;
};

// p0, p1, p2: the vertices' (x, y, z, w). Operation order as in the reference's _homogeneous.
template <typename T>
PE_HD RastHom<T> rast_homogeneous(const T* p0, const T* p1, const T* p2, T X, T Y) {
  RastHom<T> h;
  const T* p[3] = {p0, p1, p2};
  for (int k = 0; k < 3; ++k) {
    h.a[k] = p[k][0] - rn_mul(X, p[k][3]);
    h.c[k] = p[k][1] - rn_mul(Y, p[k][3]);
  }
  h.b[0] = rn_mul(h.a[1], h.c[2]) - rn_mul(h.a[2], h.c[1]);
  h.b[1] = rn_mul(h.a[2], h.c[0]) - rn_mul(h.a[0], h.c[2]);
  h.b[2] = rn_mul(h.a[0], h.c[1]) - rn_mul(h.a[1], h.c[0]);
  h.s = h.b[0] + h.b[1] + h.b[2];
  h.d = rn_mul(h.b[0], p0[3]) + rn_mul(h.b[1], p1[3]) + rn_mul(h.b[2], p2[3]);
  h.n = rn_mul(h.b[0], p0[2]) + rn_mul(h.b[1], p1[2]) + rn_mul(h.b[2], p2[2]);
  return h;
}

// True when the triangle covers the pixel centre (X, Y), with its (u, v, z/w) there. The caller
// has culled triangles with no vertex at w > 0 (rast_box). NaN anywhere fails a comparison and
// leaves the pixel uncovered.
template <typename T>
PE_HD bool rast_eval(const T* p0, const T* p1, const T* p2, T X, T Y, T& u, T& v, T& zw) {
  const RastHom<T> h = rast_homogeneous(p0, p1, p2, X, Y);
  if (!(h.s != T(0))) return false;
  // the tests one by one, so that most pixels outside the triangle skip the later divisions
  u = rn_div(h.b[0], h.s);
  if (!(u >= T(0))) return false;
  v = rn_div(h.b[1], h.s);
  if (!(v >= T(0)) || !(rn_div(h.b[2], h.s) >= T(0)) || !(rn_div(h.d, h.s) > T(0))) return false;
  zw = rn_div(h.n, h.d);
  return zw >= T(-1) && zw <= T(1);
}

// The depth test's float32 depth (z/w rounded to nearest, -0 as +0) and the 64-bit key that
// orders (depth, triangle id) lexicographically as unsigned integers: the depth's bits made
// order-preserving (negative floats reversed) in the high half, the id in the low half. The
// smallest key wins; no covered pixel has the key kRastEmpty.
constexpr uint64_t kRastEmpty = ~uint64_t(0);

template <typename T>
PE_HD float rast_depth(T zw) {
  const float z = static_cast<float>(zw);
  return z == 0.0f ? 0.0f : z;
}

PE_HD uint64_t rast_key(float depth, int64_t t) {
#if defined(__CUDA_ARCH__)
  uint32_t bits = __float_as_uint(depth);
#else
  uint32_t bits;
  std::memcpy(&bits, &depth, sizeof bits);
#endif
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(t);
}

// Gradient of (u, v, z/w) at one pixel w.r.t. the triangle's vertices, with upstream gradients
// gu, gv, gz: g[4 k + j] = dL/dp_k[j] (x, y, z, w). With h at (X, Y):
//   dL/db_k = (gu (δ_k0 - u) + gv (δ_k1 - v)) / s + gz (z_k - z/w w_k) / d
//   dL/da = c x dL/db,   dL/dc = dL/db x a       (b = a x c)
//   dL/dx_k = dL/da_k,   dL/dy_k = dL/dc_k,   dL/dz_k = gz b_k / d,
//   dL/dw_k = -X dL/da_k - Y dL/dc_k - gz z/w b_k / d
template <typename T>
PE_HD void rast_grad(const T* p0, const T* p1, const T* p2, T X, T Y, T gu, T gv, T gz, T* g) {
  const RastHom<T> h = rast_homogeneous(p0, p1, p2, X, Y);
  const T* p[3] = {p0, p1, p2};
  const T inv_s = T(1) / h.s, inv_d = T(1) / h.d;
  const T u = h.b[0] * inv_s, v = h.b[1] * inv_s, zw = h.n * inv_d;
  const T base = -(gu * u + gv * v) * inv_s;  // the part of dL/db_k common to every k
  T gb[3];
  for (int k = 0; k < 3; ++k) gb[k] = base + gz * (p[k][2] - zw * p[k][3]) * inv_d;
  gb[0] += gu * inv_s;
  gb[1] += gv * inv_s;
  const T ga[3] = {h.c[1] * gb[2] - h.c[2] * gb[1], h.c[2] * gb[0] - h.c[0] * gb[2],
                   h.c[0] * gb[1] - h.c[1] * gb[0]};
  const T gc[3] = {gb[1] * h.a[2] - gb[2] * h.a[1], gb[2] * h.a[0] - gb[0] * h.a[2],
                   gb[0] * h.a[1] - gb[1] * h.a[0]};
  for (int k = 0; k < 3; ++k) {
    const T gzk = gz * h.b[k] * inv_d;
    g[4 * k + 0] = ga[k];
    g[4 * k + 1] = gc[k];
    g[4 * k + 2] = gzk;
    g[4 * k + 3] = -X * ga[k] - Y * gc[k] - zw * gzk;
  }
}

// ---------------------------------------------------------------------------------------------
// Per triangle: culling and the screen bounding box.

// Inclusive pixel ranges [x0, x1] x [y0, y1]; empty when x0 > x1 or y0 > y1.
struct RastBox {
  int32_t x0, x1, y0, y1;
  PE_HD bool empty() const { return x0 > x1 || y0 > y1; }
  PE_HD int64_t area() const { return empty() ? 0 : int64_t(x1 - x0 + 1) * (y1 - y0 + 1); }
};

// Margin of the bounding boxes, in pixels. Rounding moves the coverage test's edges by about
// eps * n pixels (float32 at n = 32768: 0.002 pixels), and the box's own x / w and scaling by as
// little; half a pixel leaves a wide safety factor, and a box at most one pixel wider than the
// projected triangle's extent (small triangles are most of a mesh: their boxes are most of the work).
constexpr float kRastBoxMargin = 0.5f;

// The pixels i of n whose centre, at ((ndc + 1) n - 1) / 2 in pixel units, lies in [lo, hi] (NDC)
// grown by kRastBoxMargin pixels each side; false when none (or NaN bounds). Infinite bounds clamp
// to the image.
template <typename T>
PE_HD bool rast_span(T lo, T hi, int32_t n, int32_t& i0, int32_t& i1) {
  const T f0 = ((lo + T(1)) * T(n) - T(1)) * T(0.5) - T(kRastBoxMargin);
  const T f1 = ((hi + T(1)) * T(n) - T(1)) * T(0.5) + T(kRastBoxMargin);
  if (!(f0 <= f1) || f1 < T(0) || f0 > T(n - 1)) return false;
  if (f0 <= T(0)) {
    i0 = 0;
  } else {  // ceil(f0), f0 in (0, n - 1]
    i0 = static_cast<int32_t>(f0);
    if (static_cast<T>(i0) < f0) ++i0;
  }
  i1 = f1 >= T(n - 1) ? n - 1 : static_cast<int32_t>(f1);  // floor(f1), f1 in [0, n - 1)
  return i0 <= i1;
}

// The pixels triangle (i0, i1, i2) may cover in an H x W image: empty for a triangle with an
// index outside [0, V) (the Python layer rejects those unless told not to check) or with no vertex
// at w > 0; the whole image for one that crosses w = 0 (correct, not fast: its projected vertices
// do not bound it); else the projected vertices' extent, kRastBoxMargin wider each side.
template <typename T>
PE_HD RastBox rast_box(const T* pos, int64_t V, const int64_t* tri, int32_t H, int32_t W) {
  const RastBox none{0, -1, 0, -1};
  const int64_t i[3] = {tri[0], tri[1], tri[2]};
  for (int k = 0; k < 3; ++k)
    if (i[k] < 0 || i[k] >= V) return none;
  const T* p[3] = {pos + 4 * i[0], pos + 4 * i[1], pos + 4 * i[2]};
  const bool in_front[3] = {p[0][3] > T(0), p[1][3] > T(0), p[2][3] > T(0)};
  if (!(in_front[0] || in_front[1] || in_front[2])) return none;
  if (!(in_front[0] && in_front[1] && in_front[2])) return {0, W - 1, 0, H - 1};
  T lo[2], hi[2];
  for (int j = 0; j < 2; ++j) {
    for (int k = 0; k < 3; ++k) {
      const T q = p[k][j] / p[k][3];
      lo[j] = k == 0 || q < lo[j] ? q : lo[j];
      hi[j] = k == 0 || q > hi[j] ? q : hi[j];
      if (q != q) return none;  // NaN: covers nothing
    }
  }
  RastBox box;
  if (!rast_span(lo[0], hi[0], W, box.x0, box.x1) || !rast_span(lo[1], hi[1], H, box.y0, box.y1)) return none;
  return box;
}

// The triangle of a rast id channel value (id + 1 as a float, rounded to the nearest integer),
// or -1 for an empty pixel or an id beyond T.
template <typename T>
PE_HD int64_t rast_triangle(T id, int64_t n_tri) {
  const T r = rast_rint(id);
  if (!(r >= T(1) && r <= static_cast<T>(n_tri))) return -1;
  return static_cast<int64_t>(r) - 1;
}

// ---------------------------------------------------------------------------------------------
// interpolate: out = u a_0 + v a_1 + (1 - u - v) a_2, in the reference's order.

template <typename T>
PE_HD T interp_value(T u, T v, T a0, T a1, T a2) {
  return rn_mul(u, a0) + rn_mul(v, a1) + rn_mul(T(1) - u - v, a2);
}

// ---------------------------------------------------------------------------------------------
// Launchers, T = float or double: raw pointers only, no torch. B images of H x W, V vertices,
// T triangles. rasterize_fwd writes every element of rast; the backward launchers add into
// grad_pos / grad_attr, which the caller zeroes, and write every element of grad_rast. The CUDA
// ones return 0 or the cudaError_t of the failed launch.

namespace cpu {
template <typename T>
void rasterize_fwd(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W, const T* pos, const int64_t* tri,
                   T* rast);
template <typename T>
void rasterize_bwd(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W, const T* g_rast, const T* pos,
                   const int64_t* tri, const T* rast, T* grad_pos);
template <typename T>
void interpolate_fwd(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P, const T* attr,
                     const T* rast, const int64_t* tri, T* out);
// grad_attr or grad_rast may be null (not needed).
template <typename T>
void interpolate_bwd(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P, const T* g_out,
                     const T* attr, const T* rast, const int64_t* tri, T* grad_attr, T* grad_rast);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
namespace cuda {
// Scratch: keys [B * H * W] filled with kRastEmpty, large [B * n_tri], n_large [1] zeroed.
template <typename T>
int rasterize_fwd(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W, const T* pos, const int64_t* tri,
                  T* rast, uint64_t* keys, int64_t* large, int32_t* n_large, cudaStream_t stream);
template <typename T>
int rasterize_bwd(int64_t B, int64_t V, int64_t n_tri, int32_t H, int32_t W, const T* g_rast, const T* pos,
                  const int64_t* tri, const T* rast, T* grad_pos, cudaStream_t stream);
template <typename T>
int interpolate_fwd(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P, const T* attr,
                    const T* rast, const int64_t* tri, T* out, cudaStream_t stream);
template <typename T>
int interpolate_bwd(int64_t B, int64_t Ba, int64_t V, int64_t C, int64_t n_tri, int64_t P, const T* g_out,
                    const T* attr, const T* rast, const int64_t* tri, T* grad_attr, T* grad_rast,
                    cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
