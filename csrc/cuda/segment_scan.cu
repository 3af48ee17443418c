// CUDA kernels of segment_scan over the shared per-segment maths in pyengine/segment_scan.h.
//
// Work split (as nerfacc's scans): one thread per segment, which walks its elements in order
// (forward) or forward then in reverse (backward). A thread owns its segment's elements, so
// there are no atomics and reruns are bit-identical. Segments of a NeRF batch hold tens to
// hundreds of elements, which keeps each thread's loop short next to the launch.
#include <cuda_runtime.h>

#include "pyengine/segment_scan.h"

namespace pe {
namespace cuda {
namespace {

constexpr int kThreads = 128;

template <typename T, bool PROD, bool EXCLUSIVE>
__global__ void segment_scan_fwd_kernel(int64_t R, int64_t S, const int64_t* packed_info, const T* x, T* y) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  pe::segment_scan_fwd<T, PROD, EXCLUSIVE>(packed_info, x, y, r, S);
}

template <typename T, bool PROD, bool EXCLUSIVE>
__global__ void segment_scan_bwd_kernel(int64_t R, int64_t S, const int64_t* packed_info, const T* x, const T* g,
                                        T* dx) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  pe::segment_scan_bwd<T, PROD, EXCLUSIVE>(packed_info, x, g, dx, r, S);
}

unsigned blocks(int64_t R) { return static_cast<unsigned>((R + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
int segment_scan_fwd(int64_t R, int64_t S, bool prod, bool exclusive, const int64_t* packed_info, const T* x, T* y,
                     cudaStream_t stream) {
  if (R == 0) return 0;
  dispatch_segment_scan(prod, exclusive, [&](auto p, auto e) {
    segment_scan_fwd_kernel<T, decltype(p)::value, decltype(e)::value>
        <<<blocks(R), kThreads, 0, stream>>>(R, S, packed_info, x, y);
  });
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int segment_scan_bwd(int64_t R, int64_t S, bool prod, bool exclusive, const int64_t* packed_info, const T* x,
                     const T* g, T* dx, cudaStream_t stream) {
  if (R == 0) return 0;
  dispatch_segment_scan(prod, exclusive, [&](auto p, auto e) {
    segment_scan_bwd_kernel<T, decltype(p)::value, decltype(e)::value>
        <<<blocks(R), kThreads, 0, stream>>>(R, S, packed_info, x, g, dx);
  });
  return static_cast<int>(cudaGetLastError());
}

template int segment_scan_fwd<float>(int64_t, int64_t, bool, bool, const int64_t*, const float*, float*,
                                     cudaStream_t);
template int segment_scan_fwd<double>(int64_t, int64_t, bool, bool, const int64_t*, const double*, double*,
                                      cudaStream_t);
template int segment_scan_bwd<float>(int64_t, int64_t, bool, bool, const int64_t*, const float*, const float*, float*,
                                     cudaStream_t);
template int segment_scan_bwd<double>(int64_t, int64_t, bool, bool, const int64_t*, const double*, const double*,
                                      double*, cudaStream_t);

}  // namespace cuda
}  // namespace pe
