// CUDA kernels of ray_aabb_intersect and ray_march over the shared maths in
// pyengine/ray_march.h.
//
// Work split: ray_aabb_intersect runs one thread per (ray, box) pair, consecutive threads on the
// boxes of one ray, so the [N, M] outputs are written coalesced. ray_march runs one thread per
// ray in two passes (as nerfacc): the count pass writes counts[r], the host turns them into
// offsets with torch.cumsum, and the fill pass re-marches each ray and writes its samples to
// [starts[r], starts[r] + counts[r]), a slice no other thread touches (no atomics). Rays of a
// warp differ in length, so lanes idle while the longest ray finishes; rays come in image order,
// so neighbouring lanes usually have similar lengths. binaries is read one byte per step; a 128^3
// level is 2 MB and stays in L2.
#include <cuda_runtime.h>

#include "pyengine/ray_march.h"

namespace pe {
namespace cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void ray_aabb_intersect_kernel(int64_t N, int64_t M, const T* __restrict__ rays_o,
                                          const T* __restrict__ rays_d,
                                          const T* __restrict__ aabbs, T near_plane, T far_plane,
                                          T miss_value, T* __restrict__ t_mins,
                                          T* __restrict__ t_maxs, bool* __restrict__ hits) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * M) return;
  const int64_t n = i / M, m = i % M;
  T t_enter, t_exit;
  const bool hit = ray_aabb_hit<T>(rays_o + n * 3, rays_d + n * 3, aabbs + m * 6, t_enter, t_exit);
  t_mins[i] = hit ? rm_clamp(t_enter, near_plane, far_plane) : miss_value;
  t_maxs[i] = hit ? rm_clamp(t_exit, near_plane, far_plane) : miss_value;
  hits[i] = hit;
}

__global__ void ray_march_count_kernel(int64_t R, const MarchGrid g,
                                       const float* __restrict__ rays_o,
                                       const float* __restrict__ rays_d,
                                       const float* __restrict__ t_min,
                                       const float* __restrict__ t_max,
                                       const float* __restrict__ jitter,
                                       int64_t* __restrict__ counts) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  MarchCount emit;
  march_ray(g, rays_o + r * 3, rays_d + r * 3, t_min[r], t_max[r], jitter ? jitter[r] : 0.0f, emit);
  counts[r] = emit.n;
}

__global__ void ray_march_fill_kernel(int64_t R, const MarchGrid g,
                                      const float* __restrict__ rays_o,
                                      const float* __restrict__ rays_d,
                                      const float* __restrict__ t_min,
                                      const float* __restrict__ t_max,
                                      const float* __restrict__ jitter,
                                      const int64_t* __restrict__ starts,
                                      const int64_t* __restrict__ counts,
                                      int64_t* __restrict__ ray_indices,
                                      float* __restrict__ t_starts, float* __restrict__ t_ends) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R || counts[r] == 0) return;
  MarchFill emit{r, starts[r], ray_indices, t_starts, t_ends};
  march_ray(g, rays_o + r * 3, rays_d + r * 3, t_min[r], t_max[r], jitter ? jitter[r] : 0.0f, emit);
}

int last_error() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

int ray_aabb_intersect(int64_t N, int64_t M, bool is_double, const void* rays_o,
                       const void* rays_d, const void* aabbs, double near_plane, double far_plane,
                       double miss_value, void* t_mins, void* t_maxs, bool* hits, void* stream) {
  if (N * M == 0) return 0;
  auto s = static_cast<cudaStream_t>(stream);
  if (is_double) {
    ray_aabb_intersect_kernel<double><<<blocks_for(N * M), kThreads, 0, s>>>(
        N, M, static_cast<const double*>(rays_o), static_cast<const double*>(rays_d),
        static_cast<const double*>(aabbs), near_plane, far_plane, miss_value,
        static_cast<double*>(t_mins), static_cast<double*>(t_maxs), hits);
  } else {
    // the planes and miss_value are rounded to float32 once, as the reference does
    ray_aabb_intersect_kernel<float><<<blocks_for(N * M), kThreads, 0, s>>>(
        N, M, static_cast<const float*>(rays_o), static_cast<const float*>(rays_d),
        static_cast<const float*>(aabbs), static_cast<float>(near_plane),
        static_cast<float>(far_plane), static_cast<float>(miss_value),
        static_cast<float*>(t_mins), static_cast<float*>(t_maxs), hits);
  }
  return last_error();
}

int ray_march_count(int64_t R, const MarchGrid& g, const float* rays_o, const float* rays_d,
                    const float* t_min, const float* t_max, const float* jitter, int64_t* counts,
                    void* stream) {
  if (R == 0) return 0;
  ray_march_count_kernel<<<blocks_for(R), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      R, g, rays_o, rays_d, t_min, t_max, jitter, counts);
  return last_error();
}

int ray_march_fill(int64_t R, const MarchGrid& g, const float* rays_o, const float* rays_d,
                   const float* t_min, const float* t_max, const float* jitter,
                   const int64_t* starts, const int64_t* counts, int64_t* ray_indices,
                   float* t_starts, float* t_ends, void* stream) {
  if (R == 0) return 0;
  ray_march_fill_kernel<<<blocks_for(R), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      R, g, rays_o, rays_d, t_min, t_max, jitter, starts, counts, ray_indices, t_starts, t_ends);
  return last_error();
}

}  // namespace cuda
}  // namespace pe
