// 2D texture sampling (nvdiffrast's nearest and bilinear modes, no mipmaps): the per-pixel maths
// shared by the CPU and CUDA kernels.
//
// Semantics: pyengine/reference/texture.py is the specification. Per output pixel and axis (u
// along the texture's width Wt, v along its height Ht): wrap takes u - floor(u); nearest reads
// texel floor(u Wt) (zero mode: 0 outside [0, Wt); else clamped into [0, Wt - 1]); linear uses
// s = u Wt - 0.5 (clamp mode: s clamped into [0, Wt - 1], the same texel twice at either end),
// i0 = floor(s), i1 = i0 + 1, f = s - i0, wrap mode wrapping i0 = -1 and i1 = Wt, zero mode
// reading texels outside as 0; out = lerp(lerp(a00, a10, fu), lerp(a01, a11, fu), fv). A pixel
// with a non-finite u or v gives 0 and no gradient.
//
// Bit-identical texel choice across backends: u Wt goes through rn_mul (__fmul_rn / __dmul_rn on
// the device, never contracted into an FMA with the following - 0.5), so floor(s) and f are those
// of the float32 reference; csrc/cpu/texture.cpp turns contraction off for its translation unit.
//
// Memory layout: tex [Bt, Ht, Wt, C] (Bt = 1: one texture for every image, or Bt = B), uv [B, h,
// w, 2], out / grad_out [B, h, w, C], grad_tex like tex, grad_uv like uv; row-major, contiguous.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "pyengine/common.h"

namespace pe {

enum TextureBoundary : int { kTexWrap = 0, kTexClamp = 1, kTexZero = 2 };

// Finite (not NaN, not infinite): a - a is 0 exactly then, NaN otherwise (no fast-math anywhere).
template <typename T>
PE_HD bool tex_finite(T a) {
  return a - a == T(0);
}

template <typename T>
PE_HD T tex_clamp(T a, T lo, T hi) {
  return a < lo ? lo : (a > hi ? hi : a);
}

template <typename T>
struct TexturePtrs {
  const T* tex;  // [Bt, Ht, Wt, C]
  const T* uv;   // [B, h, w, 2]
  int64_t B, h, w, Bt, Ht, Wt, C;
};

// One axis of n texels: texel indices i0, i1 in [0, n), the weight f of i1, and whether each is
// read (ok; a texel not read counts as 0).
template <typename T>
struct TexAxis {
  int64_t i0, i1;
  T f;
  bool ok0, ok1;
};

template <typename T, bool LINEAR, int BOUNDARY>
PE_HD TexAxis<T> tex_axis(T u, int64_t n) {
  const T nf = static_cast<T>(n);
  TexAxis<T> a;
  if (BOUNDARY == kTexWrap) u = u - pe_floor(u);
  if (!LINEAR) {
    const T i = pe_floor(rn_mul(u, nf));
    a.ok0 = BOUNDARY != kTexZero || (i >= T(0) && i < nf);
    a.i0 = a.i1 = static_cast<int64_t>(tex_clamp(i, T(0), nf - T(1)));
    a.f = T(0);
    a.ok1 = false;
    return a;
  }
  T s = rn_mul(u, nf) - T(0.5);
  bool same = false;
  if (BOUNDARY == kTexClamp) {
    s = tex_clamp(s, T(0), nf - T(1));
    same = s == T(0) || s == nf - T(1);
  } else if (BOUNDARY == kTexZero) {
    s = tex_clamp(s, T(-2), nf + T(1));  // small indices; every texel read out there is 0 anyway
  }
  T i0 = pe_floor(s);
  a.f = s - i0;
  T i1 = same ? i0 : i0 + T(1);
  if (BOUNDARY == kTexWrap) {
    if (i0 < T(0)) i0 += nf;
    if (i1 >= nf) i1 -= nf;
  }
  a.ok0 = i0 >= T(0) && i0 < nf;
  a.ok1 = i1 >= T(0) && i1 < nf;
  a.i0 = static_cast<int64_t>(tex_clamp(i0, T(0), nf - T(1)));
  a.i1 = static_cast<int64_t>(tex_clamp(i1, T(0), nf - T(1)));
  return a;
}

// The four texels of pixel q: element offsets into tex (channel 0) and whether each is read;
// false when the pixel reads nothing (non-finite uv).
template <typename T, bool LINEAR, int BOUNDARY>
PE_HD bool tex_lookup(const TexturePtrs<T>& p, int64_t q, int64_t off[4], bool ok[4], T& fu, T& fv) {
  const T u = p.uv[2 * q], v = p.uv[2 * q + 1];
  if (!(tex_finite(u) && tex_finite(v))) return false;
  const TexAxis<T> au = tex_axis<T, LINEAR, BOUNDARY>(u, p.Wt);
  const TexAxis<T> av = tex_axis<T, LINEAR, BOUNDARY>(v, p.Ht);
  // the image's own texture, or the shared one (no division then)
  const int64_t base = p.Bt > 1 ? q / (p.h * p.w) * p.Ht * p.Wt : 0;
  off[0] = (base + av.i0 * p.Wt + au.i0) * p.C;  // a00
  off[1] = (base + av.i0 * p.Wt + au.i1) * p.C;  // a10
  off[2] = (base + av.i1 * p.Wt + au.i0) * p.C;  // a01
  off[3] = (base + av.i1 * p.Wt + au.i1) * p.C;  // a11
  ok[0] = au.ok0 && av.ok0;
  ok[1] = au.ok1 && av.ok0;
  ok[2] = au.ok0 && av.ok1;
  ok[3] = au.ok1 && av.ok1;
  fu = au.f;
  fv = av.f;
  return true;
}

template <typename T, bool LINEAR, int BOUNDARY>
PE_HD void tex_pixel_fwd(const TexturePtrs<T>& p, int64_t q, T* out) {
  const int64_t C = p.C;
  int64_t off[4];
  bool ok[4];
  T fu, fv;
  T* o = out + q * C;
  if (!tex_lookup<T, LINEAR, BOUNDARY>(p, q, off, ok, fu, fv)) {
    for (int64_t c = 0; c < C; ++c) o[c] = T(0);
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    const T a00 = ok[0] ? p.tex[off[0] + c] : T(0);
    if (!LINEAR) {
      o[c] = a00;
      continue;
    }
    const T a10 = ok[1] ? p.tex[off[1] + c] : T(0);
    const T a01 = ok[2] ? p.tex[off[2] + c] : T(0);
    const T a11 = ok[3] ? p.tex[off[3] + c] : T(0);
    const T top = a00 + rn_mul(fu, a10 - a00);
    const T bottom = a01 + rn_mul(fu, a11 - a01);
    o[c] = top + rn_mul(fv, bottom - top);
  }
}

// dL/duv of pixel q (linear mode; nearest has none): Wt dL/dfu, Ht dL/dfv.
template <typename T, bool LINEAR, int BOUNDARY>
PE_HD void tex_pixel_grad_uv(const TexturePtrs<T>& p, const T* g, int64_t q, T* grad_uv) {
  int64_t off[4];
  bool ok[4];
  T fu, fv;
  T gu = T(0), gv = T(0);
  if (LINEAR && tex_lookup<T, LINEAR, BOUNDARY>(p, q, off, ok, fu, fv)) {
    const T* gq = g + q * p.C;
    for (int64_t c = 0; c < p.C; ++c) {
      const T a00 = ok[0] ? p.tex[off[0] + c] : T(0);
      const T a10 = ok[1] ? p.tex[off[1] + c] : T(0);
      const T a01 = ok[2] ? p.tex[off[2] + c] : T(0);
      const T a11 = ok[3] ? p.tex[off[3] + c] : T(0);
      const T top = a00 + rn_mul(fu, a10 - a00);
      const T bottom = a01 + rn_mul(fu, a11 - a01);
      gu += rn_mul(gq[c], rn_mul(T(1) - fv, a10 - a00) + rn_mul(fv, a11 - a01));
      gv += rn_mul(gq[c], bottom - top);
    }
    gu = rn_mul(gu, static_cast<T>(p.Wt));
    gv = rn_mul(gv, static_cast<T>(p.Ht));
  }
  grad_uv[2 * q] = gu;
  grad_uv[2 * q + 1] = gv;
}

// Calls add(texel element offset, value) for each texel weight of pixel q times grad_out.
template <typename T, bool LINEAR, int BOUNDARY, typename Add>
PE_HD void tex_pixel_grad_tex(const TexturePtrs<T>& p, const T* g, int64_t q, Add&& add) {
  int64_t off[4];
  bool ok[4];
  T fu, fv;
  if (!tex_lookup<T, LINEAR, BOUNDARY>(p, q, off, ok, fu, fv)) return;
  const T* gq = g + q * p.C;
  T wt[4] = {T(1), T(0), T(0), T(0)};
  if (LINEAR) {
    wt[0] = rn_mul(T(1) - fu, T(1) - fv);
    wt[1] = rn_mul(fu, T(1) - fv);
    wt[2] = rn_mul(T(1) - fu, fv);
    wt[3] = rn_mul(fu, fv);
  }
  for (int k = 0; k < (LINEAR ? 4 : 1); ++k) {
    if (!ok[k]) continue;
    for (int64_t c = 0; c < p.C; ++c) add(off[k] + c, rn_mul(wt[k], gq[c]));
  }
}

// fn(std::bool_constant<LINEAR>, std::integral_constant<int, BOUNDARY>).
template <bool LINEAR, typename Fn>
inline void dispatch_texture_boundary(int boundary, Fn& fn) {
  const std::bool_constant<LINEAR> l;
  if (boundary == kTexClamp)
    fn(l, std::integral_constant<int, kTexClamp>());
  else if (boundary == kTexZero)
    fn(l, std::integral_constant<int, kTexZero>());
  else
    fn(l, std::integral_constant<int, kTexWrap>());
}
template <typename Fn>
inline void dispatch_texture(int filter, int boundary, Fn&& fn) {
  if (filter == 1)
    dispatch_texture_boundary<true>(boundary, fn);
  else
    dispatch_texture_boundary<false>(boundary, fn);
}

// ---------------------------------------------------------------------------------------------
// Launchers, T = float or double: raw pointers only, no torch. filter: 0 nearest, 1 linear;
// boundary: TextureBoundary. The forward writes every element of out; the backward writes every
// element of grad_uv (when not null) and adds into grad_tex (when not null), which the caller
// zeroes. The CUDA ones return 0 or the cudaError_t of the failed launch.

namespace cpu {
template <typename T>
void texture_fwd(const TexturePtrs<T>& p, int filter, int boundary, T* out);
template <typename T>
void texture_bwd(const TexturePtrs<T>& p, int filter, int boundary, const T* grad_out, T* grad_tex, T* grad_uv);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
namespace cuda {
template <typename T>
int texture_fwd(const TexturePtrs<T>& p, int filter, int boundary, T* out, cudaStream_t stream);
template <typename T>
int texture_bwd(const TexturePtrs<T>& p, int filter, int boundary, const T* grad_out, T* grad_tex, T* grad_uv,
                cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
