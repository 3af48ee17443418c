// CPU kernels of texture: OpenMP loops over the per-pixel maths in pyengine/texture.h, the same
// functions the CUDA kernels run.
//
// Floating-point contraction is switched off for this translation unit (before any include): the
// texel choice must round as the float32 reference does (see pyengine/texture.h).
//
// Work split: pixels for the forward and grad_uv (gathers). grad_tex is a scatter: with one
// texture per image (Bt = B) each image's pixels add into their own texture, so images run in
// parallel and each one's pixels in order; a texture shared by every image is summed by one
// thread. Either way grad_tex is the same bits whatever the thread count.
#include "pyengine/no_contract.h"  // first: see there

#include "pyengine/texture.h"

#include <cstdint>

namespace pe {
namespace cpu {

template <typename T>
void texture_fwd(const TexturePtrs<T>& p, int filter, int boundary, T* out) {
  const int64_t n = p.B * p.h * p.w;
  dispatch_texture(filter, boundary, [&](auto l, auto bd) {
    constexpr bool L = decltype(l)::value;
    constexpr int BD = decltype(bd)::value;
#pragma omp parallel for schedule(static)
    for (int64_t q = 0; q < n; ++q) tex_pixel_fwd<T, L, BD>(p, q, out);
  });
}

template <typename T>
void texture_bwd(const TexturePtrs<T>& p, int filter, int boundary, const T* grad_out, T* grad_tex, T* grad_uv) {
  const int64_t n = p.B * p.h * p.w, per_image = p.h * p.w;
  dispatch_texture(filter, boundary, [&](auto l, auto bd) {
    constexpr bool L = decltype(l)::value;
    constexpr int BD = decltype(bd)::value;
    if (grad_uv) {
#pragma omp parallel for schedule(static)
      for (int64_t q = 0; q < n; ++q) tex_pixel_grad_uv<T, L, BD>(p, grad_out, q, grad_uv);
    }
    if (!grad_tex) return;
    const auto add = [grad_tex](int64_t i, T v) { grad_tex[i] += v; };
    if (p.Bt == p.B && p.B > 1) {
#pragma omp parallel for schedule(static)
      for (int64_t b = 0; b < p.B; ++b)
        for (int64_t q = b * per_image; q < (b + 1) * per_image; ++q)
          tex_pixel_grad_tex<T, L, BD>(p, grad_out, q, add);
    } else {
      for (int64_t q = 0; q < n; ++q) tex_pixel_grad_tex<T, L, BD>(p, grad_out, q, add);
    }
  });
}

template void texture_fwd<float>(const TexturePtrs<float>&, int, int, float*);
template void texture_fwd<double>(const TexturePtrs<double>&, int, int, double*);
template void texture_bwd<float>(const TexturePtrs<float>&, int, int, const float*, float*, float*);
template void texture_bwd<double>(const TexturePtrs<double>&, int, int, const double*, double*, double*);

}  // namespace cpu
}  // namespace pe
