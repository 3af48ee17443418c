// CUDA kernel of ball_query over the maths of pyengine/ball_query.h.
//
// One thread per (b, m) centre, grid-stride over B * M (many blocks per batch, any B fits). The
// thread scans the batch's points in index order and stops at the K-th neighbour; the threads of
// a warp read the same point at the same time (a broadcast), and their centres are coalesced
// along m. No reduction, so the output is the same in every run.
#include <cuda_runtime.h>

#include "pyengine/cuda_grid.h"

#include "pyengine/ball_query.h"

namespace pe {
namespace cuda {
namespace {

template <typename T>
__global__ void ball_query_kernel(int64_t B, int64_t M, int64_t N, int64_t K, T r2, const T* centers,
                                  const T* points, int32_t* out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B * M;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / M, m = i % M;
    ball_query_centre(centers + b * 3 * M, M, m, points + b * 3 * N, N, r2, K, out + i * K);
  }
}

}  // namespace

template <typename T>
int ball_query(int64_t B, int64_t M, int64_t N, int64_t K, T r2, const T* centers, const T* points, int32_t* out,
               cudaStream_t stream) {
  if (B * M * K == 0) return 0;
  ball_query_kernel<T><<<blocks(B * M), kThreads, 0, stream>>>(B, M, N, K, r2, centers, points, out);
  return static_cast<int>(cudaGetLastError());
}

template int ball_query<float>(int64_t, int64_t, int64_t, int64_t, float, const float*, const float*, int32_t*,
                               cudaStream_t);
template int ball_query<double>(int64_t, int64_t, int64_t, int64_t, double, const double*, const double*, int32_t*,
                                cudaStream_t);

}  // namespace cuda
}  // namespace pe
