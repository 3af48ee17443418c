// CUDA kernels of antialias over the shared per-pixel maths in pyengine/antialias.h.
//
// Work split: one thread per pixel, consecutive threads along a row (coalesced reads of rast's id
// channel, color and grad_out). A thread evaluates the up to four pairs its pixel belongs to and
// writes only its own outputs (forward, grad_color): no atomics there. Nearly all threads find no
// id discontinuity and leave after reading five ids; the pair analysis (fetches of three vertices
// and three wings) runs at silhouettes only. grad_pos is scattered by the thread of each pair's p0
// with atomicAdd into the two endpoints of the crossing edge (shared by the pairs along the edge);
// float atomics make its last bits vary from run to run.
#include <cuda_runtime.h>

#include "pyengine/antialias.h"

namespace pe {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void antialias_fwd_kernel(const AntialiasPtrs<T> p, int64_t n_pixels, T* out) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= n_pixels) return;
  aa_pixel_fwd(p, q / (p.W * p.H), (q / p.W) % p.H, q % p.W, out);
}

template <typename T>
__global__ void antialias_bwd_kernel(const AntialiasPtrs<T> p, int64_t n_pixels, const T* grad_out, T* grad_color,
                                     T* grad_pos) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= n_pixels) return;
  const int64_t x = q % p.W, y = (q / p.W) % p.H, b = q / (p.W * p.H);
  if (grad_color) aa_pixel_grad_color(p, grad_out, b, y, x, grad_color);
  if (!grad_pos) return;
  for (int k = 0; k < 2; ++k) {  // the pairs this pixel is p0 of
    AAPair<T> pair;
    T g_s[3], g_e[3];
    if (!aa_pixel_pair(p, b, y, x, k, pair) || !aa_pair_grad_pos(p, grad_out, pair, g_s, g_e)) continue;
    for (int i = 0; i < 3; ++i) {
      const int c = i == 2 ? 3 : i;  // x, y, w
      atomicAdd(grad_pos + 4 * pair.row_s + c, g_s[i]);
      atomicAdd(grad_pos + 4 * pair.row_e + c, g_e[i]);
    }
  }
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
int antialias_fwd(const AntialiasPtrs<T>& p, T* out, cudaStream_t stream) {
  const int64_t n = p.B * p.H * p.W;
  if (n == 0) return 0;
  antialias_fwd_kernel<T><<<blocks(n), kThreads, 0, stream>>>(p, n, out);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int antialias_bwd(const AntialiasPtrs<T>& p, const T* grad_out, T* grad_color, T* grad_pos, cudaStream_t stream) {
  const int64_t n = p.B * p.H * p.W;
  if (n == 0 || (grad_color == nullptr && grad_pos == nullptr)) return 0;
  antialias_bwd_kernel<T><<<blocks(n), kThreads, 0, stream>>>(p, n, grad_out, grad_color, grad_pos);
  return static_cast<int>(cudaGetLastError());
}

#define PE_INSTANTIATE(T)                                                                            \
  template int antialias_fwd<T>(const AntialiasPtrs<T>&, T*, cudaStream_t);                          \
  template int antialias_bwd<T>(const AntialiasPtrs<T>&, const T*, T*, T*, cudaStream_t);
PE_INSTANTIATE(float)
PE_INSTANTIATE(double)
#undef PE_INSTANTIATE

}  // namespace cuda
}  // namespace pe
