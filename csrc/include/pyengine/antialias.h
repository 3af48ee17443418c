// Analytic antialiasing of silhouette edges (nvdiffrast's antialias): the per-pair maths shared by
// the CPU and CUDA kernels.
//
// Semantics: pyengine/reference/antialias.py is the specification; its module docstring states
// every rule (numbered 1-7 below as there). In short, for each pair of neighbouring pixels (p0 and
// its right or lower neighbour p1) whose triangle ids differ: take the nearer pixel's triangle
// (rule 2), project its vertices to pixel space relative to that pixel's centre (3), mark its
// silhouette edges with the wing vertices of `topology` (4), find the edge where the axis through
// the two centres leaves the triangle (5) and, if it is a silhouette crossing between the centres,
// blend: out[target] += alpha (color[p1] - color[p0]) (6). The gradient w.r.t. pos flows through
// the crossing position into the edge's two endpoints, with 1 / (dy + copysign(1e-3, dy)) for
// 1 / dy as nvdiffrast (7; eps = 0: the exact derivative).
//
// Bit-identical decisions across backends. Every quantity that a decision reads (which pairs
// blend, which edge, the target pixel, alpha itself) is computed with one rounding per operation
// in the reference's order; products go through rn_mul, which on the device is __fmul_rn /
// __dmul_rn (nvcc would otherwise contract `a * b - c * d` into an FMA and move a sign test by an
// ulp on the GPU only), quotients through rn_div (__fdiv_rn). csrc/cpu/antialias.cpp turns
// contraction off for its translation unit. Blended colours and gradients are sums whose order
// differs from the reference's, so they agree up to rounding.
//
// Work split: gather by pixel. A pixel belongs to at most four pairs (with its right, lower, left
// and upper neighbour); the forward thread of a pixel evaluates the four and adds the blends that
// target it, so outputs need no atomics and each pair is evaluated by both its pixels (pairs are
// evaluated in full only at id discontinuities, a small fraction of an image). The backward does
// the same for grad_color; grad_pos is scattered from each pair's p0 (atomics on the GPU, a fixed
// order on the CPU).
//
// Memory layout: color / out / grad_out [B, H, W, C], rast [B, H, W, 4] (u, v, z/w, id + 1), pos /
// grad_pos [Bp, V, 4] with Bp = 1 (one mesh for every image) or B, tri and topology [T, 3] int64;
// all row-major and contiguous.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "pyengine/common.h"

namespace pe {

// ---------------------------------------------------------------------------------------------
// Sign bits and rounding (products and quotients: rn_mul / rn_div in pyengine/common.h).


// Nearest integer, ties to even (torch.round), for the id channel.
PE_HD float aa_rint(float a) {
#if defined(__CUDA_ARCH__)
  return rintf(a);
#else
  return std::rint(a);
#endif
}
PE_HD double aa_rint(double a) {
#if defined(__CUDA_ARCH__)
  return ::rint(a);
#else
  return std::rint(a);
#endif
}

// The sign bit (torch.signbit): set for -0.0 and negative values (and NaNs that carry it).
PE_HD bool aa_signbit(float v) {
#if defined(__CUDA_ARCH__)
  return (__float_as_uint(v) >> 31) != 0;
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u >> 31) != 0;
#endif
}
PE_HD bool aa_signbit(double v) {
#if defined(__CUDA_ARCH__)
  return __double_as_longlong(v) < 0;
#else
  int64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u < 0;
#endif
}

template <typename T>
PE_HD T aa_abs(T a) {
  return a < T(0) ? -a : a;
}

// nvdiffrast's slack of the crossing window (1/16 pixel).
constexpr double kAAWindowSlack = 0.0625;

// ---------------------------------------------------------------------------------------------
// Inputs and one pair's analysis.

template <typename T>
struct AntialiasPtrs {
  const T* color;           // [B, H, W, C]
  const T* rast;            // [B, H, W, 4]
  const T* pos;             // [Bp, V, 4]
  const int64_t* tri;       // [T, 3]
  const int64_t* topology;  // [T, 3], -1: no neighbour across the edge
  int64_t B, H, W, C, Bp, V, NT;  // NT triangles
  T grad_eps;                      // the position gradient's regulariser (nvdiffrast: 1e-3 pixel)
};

// A blended pair: out[p0 if alpha > 0 else p1] += alpha (color[p1] - color[p0]). For the position
// gradient: the rows (bp * V + vertex) of the crossing edge's endpoints s and e in pos, and their
// coordinates in the pair's frame (u along the pair, v across it; rule 5).
template <typename T>
struct AAPair {
  int64_t p0, p1;
  T alpha;
  int64_t row_s, row_e;
  T us, vs, ue, ve;
  bool down;
};

// Rules 1-6 for the pair of pixel (b, y, x) and its right (down = false) or lower neighbour, both
// inside the image. Returns true and fills r when the pair blends.
template <typename T>
PE_HD bool aa_pair(const AntialiasPtrs<T>& p, int64_t b, int64_t y, int64_t x, bool down, AAPair<T>& r) {
  const int64_t p0 = (b * p.H + y) * p.W + x;
  const int64_t p1 = p0 + (down ? p.W : 1);
  // 1. a discontinuity between valid ids (NaN fails the range test); equal raw values round alike,
  // which settles nearly every pair before any rounding
  const T raw0 = p.rast[4 * p0 + 3], raw1 = p.rast[4 * p1 + 3];
  if (raw0 == raw1) return false;
  const T id0 = aa_rint(raw0), id1 = aa_rint(raw1);
  const T n_tri = static_cast<T>(p.NT);
  if (id0 == id1 || !(id0 >= T(0) && id0 <= n_tri && id1 >= T(0) && id1 <= n_tri)) return false;
  // 2. the nearer pixel's triangle (ties to p1's) and its vertices
  const int64_t t0 = static_cast<int64_t>(id0) - 1, t1 = static_cast<int64_t>(id1) - 1;
  const bool use1 = t0 < 0 || (t1 >= 0 && !(p.rast[4 * p0 + 2] < p.rast[4 * p1 + 2]));
  const int64_t t = use1 ? t1 : t0;
  int64_t vi[3], oi[3];
  for (int k = 0; k < 3; ++k) {
    vi[k] = p.tri[3 * t + k];
    if (vi[k] < 0 || vi[k] >= p.V) return false;
  }
  for (int k = 0; k < 3; ++k) {
    const int64_t o = p.topology[3 * t + k];
    oi[k] = (o >= 0 && o < p.V) ? o : vi[k];
  }
  const T ds = use1 ? T(-1) : T(1);
  const int64_t rx = x + (use1 && !down ? 1 : 0), ry = y + (use1 && down ? 1 : 0);

  // 3. pixel space, relative to the reference pixel's centre
  const int64_t base = (p.Bp == p.B ? b : 0) * p.V;
  const T* P = p.pos + 4 * base;
  const T xh = static_cast<T>(p.W) * T(0.5), yh = static_cast<T>(p.H) * T(0.5);
  const T fx = (static_cast<T>(rx) + T(0.5)) - xh, fy = (static_cast<T>(ry) + T(0.5)) - yh;
  T X[3], Y[3], OX[3], OY[3];
  for (int k = 0; k < 3; ++k) {
    const T* v = P + 4 * vi[k];
    const T iw = rn_div(T(1), v[3]);
    X[k] = rn_mul(rn_mul(v[0], iw), xh) - fx;
    Y[k] = rn_mul(rn_mul(v[1], iw), yh) - fy;
    const T* o = P + 4 * oi[k];
    const T ow = rn_div(T(1), o[3]);
    OX[k] = rn_mul(rn_mul(o[0], ow), xh) - fx;
    OY[k] = rn_mul(rn_mul(o[1], ow), yh) - fy;
  }

  // 4. silhouettes: the wing triangle (v_k replaced by o_k) has the triangle's sign bit
  const T bb = rn_mul(X[1] - X[0], Y[2] - Y[0]) - rn_mul(X[2] - X[0], Y[1] - Y[0]);
  const bool sb = aa_signbit(bb);
  bool sil[3];
  sil[0] = aa_signbit(rn_mul(X[1] - OX[0], Y[2] - OY[0]) - rn_mul(X[2] - OX[0], Y[1] - OY[0])) == sb;
  sil[1] = aa_signbit(rn_mul(X[2] - OX[1], Y[0] - OY[1]) - rn_mul(X[0] - OX[1], Y[2] - OY[1])) == sb;
  sil[2] = aa_signbit(rn_mul(X[0] - OX[2], Y[1] - OY[2]) - rn_mul(X[1] - OX[2], Y[0] - OY[2])) == sb;
  if (!(sil[0] || sil[1] || sil[2])) return false;

  // 5. the pair's frame (u along it, v across it); edge k runs from vertex k+1 to vertex k+2
  const T* U = down ? Y : X;
  const T* Vv = down ? X : Y;
  T du[3], dv[3], n[3];
  bool cr[3];
  for (int k = 0; k < 3; ++k) {
    const int s = k == 2 ? 0 : k + 1, e = k == 0 ? 2 : k - 1;
    du[k] = U[e] - U[s];
    dv[k] = Vv[e] - Vv[s];
    n[k] = rn_mul(ds, rn_mul(U[s], dv[k]) - rn_mul(Vv[s], du[k]));
    cr[k] = aa_signbit(Vv[s]) != aa_signbit(Vv[e]);
  }
  // crossing fraction n_i / dv_i > n_j / dv_j, compared without dividing
  const auto beats = [&](int i, int j) {
    if (!(cr[i] && cr[j])) return cr[i];
    return (rn_mul(n[i], dv[j]) > rn_mul(n[j], dv[i])) == (aa_signbit(dv[i]) == aa_signbit(dv[j]));
  };
  const int di = (beats(2, 0) && beats(2, 1)) ? 2 : (beats(1, 0) ? 1 : 0);

  // 6. the blend
  if (!(cr[di] && sil[di] && aa_abs(dv[di]) >= aa_abs(du[di]))) return false;
  T dc = rn_div(n[di], dv[di]);
  if (!(dc > T(-kAAWindowSlack) && dc < T(1 + kAAWindowSlack))) return false;
  dc = dc < T(0) ? T(0) : (dc > T(1) ? T(1) : dc);
  const int s = di == 2 ? 0 : di + 1, e = di == 0 ? 2 : di - 1;
  r.p0 = p0;
  r.p1 = p1;
  r.alpha = rn_mul(ds, T(0.5) - dc);
  r.row_s = base + vi[s];
  r.row_e = base + vi[e];
  r.us = U[s];
  r.vs = Vv[s];
  r.ue = U[e];
  r.ve = Vv[e];
  r.down = down;
  return true;
}

// The (up to four) pairs of pixel (b, y, x): k = 0 right, 1 down (the pixel is p0), 2 left, 3 up
// (the pixel is p1). True and r filled when pair k exists and blends.
template <typename T>
PE_HD bool aa_pixel_pair(const AntialiasPtrs<T>& p, int64_t b, int64_t y, int64_t x, int k, AAPair<T>& r) {
  switch (k) {
    case 0: return x + 1 < p.W && aa_pair(p, b, y, x, false, r);
    case 1: return y + 1 < p.H && aa_pair(p, b, y, x, true, r);
    case 2: return x > 0 && aa_pair(p, b, y, x - 1, false, r);
    default: return y > 0 && aa_pair(p, b, y - 1, x, true, r);
  }
}

// ---------------------------------------------------------------------------------------------
// Per pixel: forward and colour gradient.

// out[q] = color[q] + the blends of q's pairs that target q (in the order k = 0..3); q = (b, y, x).
template <typename T>
PE_HD void aa_pixel_fwd(const AntialiasPtrs<T>& p, int64_t b, int64_t y, int64_t x, T* out) {
  const int64_t q = (b * p.H + y) * p.W + x;
  const int64_t C = p.C;
  for (int64_t c = 0; c < C; ++c) out[q * C + c] = p.color[q * C + c];
  for (int k = 0; k < 4; ++k) {
    AAPair<T> r;
    if (!aa_pixel_pair(p, b, y, x, k, r)) continue;
    if ((r.alpha > T(0) ? r.p0 : r.p1) != q) continue;
    const T* c0 = p.color + r.p0 * C;
    const T* c1 = p.color + r.p1 * C;
    for (int64_t c = 0; c < C; ++c) out[q * C + c] += rn_mul(r.alpha, c1[c] - c0[c]);
  }
}

// grad_color[q] = g[q] + sum over q's blended pairs of -alpha g[target] (q = p0) or +alpha
// g[target] (q = p1); q = (b, y, x).
template <typename T>
PE_HD void aa_pixel_grad_color(const AntialiasPtrs<T>& p, const T* g, int64_t b, int64_t y, int64_t x,
                               T* grad_color) {
  const int64_t q = (b * p.H + y) * p.W + x;
  const int64_t C = p.C;
  T* gc = grad_color + q * C;
  for (int64_t c = 0; c < C; ++c) gc[c] = g[q * C + c];
  for (int k = 0; k < 4; ++k) {
    AAPair<T> r;
    if (!aa_pixel_pair(p, b, y, x, k, r)) continue;
    const T* gt = g + (r.alpha > T(0) ? r.p0 : r.p1) * C;
    const T a = r.p0 == q ? -r.alpha : r.alpha;
    for (int64_t c = 0; c < C; ++c) gc[c] += rn_mul(a, gt[c]);
  }
}

// The position gradient of one blended pair: dL/d(x, y, w) of the edge's endpoints s and e
// (g_s, g_e; z gets none). False when there is none (alpha saturated, or dL/dalpha = 0).
template <typename T>
PE_HD bool aa_pair_grad_pos(const AntialiasPtrs<T>& p, const T* g, const AAPair<T>& r, T g_s[3], T g_e[3]) {
  if (!(aa_abs(r.alpha) < T(0.5))) return false;  // dc clamped to 0 or 1
  const int64_t C = p.C;
  const T* gt = g + (r.alpha > T(0) ? r.p0 : r.p1) * C;
  const T* c0 = p.color + r.p0 * C;
  const T* c1 = p.color + r.p1 * C;
  T dd = T(0);  // dL/dalpha
  for (int64_t c = 0; c < C; ++c) dd += rn_mul(gt[c], c1[c] - c0[c]);
  if (dd == T(0)) return false;
  // alpha = ds / 2 - q / dy with q = us ve - vs ue; the gradient is that of -q / (dy + eps)
  const T dy = r.ve - r.vs;
  const T iy = rn_div(T(1), dy + (aa_signbit(dy) ? -p.grad_eps : p.grad_eps));
  const T xc = rn_mul(rn_mul(r.us, dy) - rn_mul(r.vs, r.ue - r.us), iy);
  const T gus = -rn_mul(rn_mul(dd, r.ve), iy), gue = rn_mul(rn_mul(dd, r.vs), iy);
  const T gvs = -rn_mul(rn_mul(dd, xc - r.ue), iy), gve = -rn_mul(rn_mul(dd, r.us - xc), iy);
  // back from the pair's frame to pixel x / y, then through the projection X = (x / w) W / 2 - fx
  const T xh = static_cast<T>(p.W) * T(0.5), yh = static_cast<T>(p.H) * T(0.5);
  const T gX[2] = {r.down ? gvs : gus, r.down ? gve : gue};
  const T gY[2] = {r.down ? gus : gvs, r.down ? gue : gve};
  const int64_t rows[2] = {r.row_s, r.row_e};
  T* outs[2] = {g_s, g_e};
  for (int i = 0; i < 2; ++i) {
    const T* v = p.pos + 4 * rows[i];
    const T iw = rn_div(T(1), v[3]);
    const T gx = rn_mul(rn_mul(gX[i], iw), xh), gy = rn_mul(rn_mul(gY[i], iw), yh);
    outs[i][0] = gx;
    outs[i][1] = gy;
    outs[i][2] = -rn_mul(rn_mul(v[0], gx) + rn_mul(v[1], gy), iw);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Launchers, T = float or double: raw pointers only, no torch. The forward writes every element of
// out; the backward writes every element of grad_color (when not null) and adds into grad_pos
// (when not null), which the caller zeroes. The CUDA ones return 0 or the cudaError_t of the
// failed launch.

namespace cpu {
template <typename T>
void antialias_fwd(const AntialiasPtrs<T>& p, T* out);
template <typename T>
void antialias_bwd(const AntialiasPtrs<T>& p, const T* grad_out, T* grad_color, T* grad_pos);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
namespace cuda {
template <typename T>
int antialias_fwd(const AntialiasPtrs<T>& p, T* out, cudaStream_t stream);
template <typename T>
int antialias_bwd(const AntialiasPtrs<T>& p, const T* grad_out, T* grad_color, T* grad_pos,
                  cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
