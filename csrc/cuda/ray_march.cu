// CUDA kernels of ray_aabb_intersect and ray_march over the shared maths in
// pyengine/ray_march.h.
//
// Work split: ray_aabb_intersect runs one thread per (ray, box) pair, consecutive threads on the
// boxes of one ray, so the [N, M] outputs are written coalesced. ray_march runs one thread per
// ray in two passes (as nerfacc): the count pass writes counts[r], the host turns them into
// offsets with torch.cumsum, and the fill pass re-marches each ray and writes its samples to
// [starts[r], starts[r] + counts[r]), a slice no other thread touches (no atomics), and never
// more than counts[r] of them. Each thread reads the six roi_aabb floats itself (one broadcast
// load per warp), so the host never copies them. Rays of a warp differ in length, so lanes idle
// while the longest ray finishes; rays come in image order, so neighbouring lanes usually have
// similar lengths. binaries is read one byte per looked-up step (a 128^3 level is 2 MB and stays in
// L2); inside a known-empty cell the steps are walked without lookups (MarchSkipper in
// pyengine/ray_march.h), with one float64 range computed per such cell.
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

__global__ void ray_march_count_kernel(int64_t R, const MarchGrid g, const MarchRays rays,
                                       int64_t* __restrict__ counts) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  MarchCount count;
  march_ray(g, march_box(g.roi_aabb), rays, r, count);
  counts[r] = count.n;
}

__global__ void ray_march_fill_kernel(int64_t R, const MarchGrid g, const MarchRays rays,
                                      const int64_t* __restrict__ starts,
                                      const int64_t* __restrict__ counts,
                                      int64_t* __restrict__ ray_indices,
                                      float* __restrict__ t_starts, float* __restrict__ t_ends) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  march_fill_ray(g, march_box(g.roi_aabb), rays, r, starts[r], counts[r], ray_indices, t_starts,
                 t_ends);
}

int last_error() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

template <typename T>
int ray_aabb_intersect(int64_t N, int64_t M, const T* rays_o, const T* rays_d, const T* aabbs,
                       T near_plane, T far_plane, T miss_value, T* t_mins, T* t_maxs, bool* hits,
                       cudaStream_t stream) {
  if (N * M == 0) return 0;
  ray_aabb_intersect_kernel<T><<<blocks_for(N * M), kThreads, 0, stream>>>(
      N, M, rays_o, rays_d, aabbs, near_plane, far_plane, miss_value, t_mins, t_maxs, hits);
  return last_error();
}
template int ray_aabb_intersect<float>(int64_t, int64_t, const float*, const float*, const float*,
                                       float, float, float, float*, float*, bool*, cudaStream_t);
template int ray_aabb_intersect<double>(int64_t, int64_t, const double*, const double*,
                                        const double*, double, double, double, double*, double*,
                                        bool*, cudaStream_t);

int ray_march_count(int64_t R, const MarchGrid& g, const MarchRays& rays, int64_t* counts,
                    cudaStream_t stream) {
  if (R == 0) return 0;
  ray_march_count_kernel<<<blocks_for(R), kThreads, 0, stream>>>(R, g, rays, counts);
  return last_error();
}

int ray_march_fill(int64_t R, const MarchGrid& g, const MarchRays& rays, const int64_t* starts,
                   const int64_t* counts, int64_t* ray_indices, float* t_starts, float* t_ends,
                   cudaStream_t stream) {
  if (R == 0) return 0;
  ray_march_fill_kernel<<<blocks_for(R), kThreads, 0, stream>>>(R, g, rays, starts, counts,
                                                                ray_indices, t_starts, t_ends);
  return last_error();
}

}  // namespace cuda
}  // namespace pe
