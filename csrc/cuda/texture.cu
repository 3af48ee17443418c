// CUDA kernels of texture over the shared per-pixel maths in pyengine/texture.h.
//
// Work split: one thread per output pixel, consecutive threads along a row (coalesced uv, out and
// grad_out; neighbouring pixels read neighbouring texels, which the L1/L2 caches share). The
// forward and grad_uv write only the thread's own pixel. grad_tex is scattered with atomicAdd into
// the (up to four) texels a pixel read: many pixels read the same texel under magnification, so
// the adds must be atomic, and their order (the last bits of grad_tex) varies from run to run.
#include <cuda_runtime.h>

#include "pyengine/texture.h"

namespace pe {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, bool L, int BD>
__global__ void texture_fwd_kernel(const TexturePtrs<T> p, int64_t n, T* out) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= n) return;
  tex_pixel_fwd<T, L, BD>(p, q, out);
}

template <typename T, bool L, int BD>
__global__ void texture_bwd_kernel(const TexturePtrs<T> p, int64_t n, const T* grad_out, T* grad_tex, T* grad_uv) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= n) return;
  if (grad_uv) tex_pixel_grad_uv<T, L, BD>(p, grad_out, q, grad_uv);
  if (grad_tex) tex_pixel_grad_tex<T, L, BD>(p, grad_out, q, [grad_tex](int64_t i, T v) { atomicAdd(grad_tex + i, v); });
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
int texture_fwd(const TexturePtrs<T>& p, int filter, int boundary, T* out, cudaStream_t stream) {
  const int64_t n = p.B * p.h * p.w;
  if (n == 0) return 0;
  dispatch_texture(filter, boundary, [&](auto l, auto bd) {
    texture_fwd_kernel<T, decltype(l)::value, decltype(bd)::value><<<blocks(n), kThreads, 0, stream>>>(p, n, out);
  });
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int texture_bwd(const TexturePtrs<T>& p, int filter, int boundary, const T* grad_out, T* grad_tex, T* grad_uv,
                cudaStream_t stream) {
  const int64_t n = p.B * p.h * p.w;
  if (n == 0 || (grad_tex == nullptr && grad_uv == nullptr)) return 0;
  dispatch_texture(filter, boundary, [&](auto l, auto bd) {
    texture_bwd_kernel<T, decltype(l)::value, decltype(bd)::value>
        <<<blocks(n), kThreads, 0, stream>>>(p, n, grad_out, grad_tex, grad_uv);
  });
  return static_cast<int>(cudaGetLastError());
}

#define PE_INSTANTIATE(T)                                                                               \
  template int texture_fwd<T>(const TexturePtrs<T>&, int, int, T*, cudaStream_t);                       \
  template int texture_bwd<T>(const TexturePtrs<T>&, int, int, const T*, T*, T*, cudaStream_t);
PE_INSTANTIATE(float)
PE_INSTANTIATE(double)
#undef PE_INSTANTIATE

}  // namespace cuda
}  // namespace pe
