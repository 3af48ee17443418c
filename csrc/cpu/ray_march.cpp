// CPU kernels of ray_aabb_intersect and ray_march: OpenMP loops over the per-ray maths in
// pyengine/ray_march.h, the same functions the CUDA kernels run.
//
// Floating-point contraction is switched off for this translation unit (before any include, so
// every function in it, inlined or not, is compiled alike): the kernels must round every product
// as the float32 PyTorch reference does. See the header comment of pyengine/ray_march.h. (Memory
// safety does not rest on it: the fill pass never writes past the count pass's sizes.)
#include "pyengine/no_contract.h"  // first: see there

#include "pyengine/ray_march.h"

#include <cstdint>

namespace pe {
namespace cpu {

template <typename T>
void ray_aabb_intersect(int64_t N, int64_t M, const T* rays_o, const T* rays_d, const T* aabbs,
                        T near_plane, T far_plane, T miss_value, T* t_mins, T* t_maxs, bool* hits) {
  const int64_t NM = N * M;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < NM; ++i) {
    const int64_t n = i / M, m = i % M;
    T t_enter, t_exit;
    const bool hit = ray_aabb_hit<T>(rays_o + n * 3, rays_d + n * 3, aabbs + m * 6, t_enter, t_exit);
    t_mins[i] = hit ? rm_clamp(t_enter, near_plane, far_plane) : miss_value;
    t_maxs[i] = hit ? rm_clamp(t_exit, near_plane, far_plane) : miss_value;
    hits[i] = hit;
  }
}

template void ray_aabb_intersect<float>(int64_t, int64_t, const float*, const float*, const float*,
                                        float, float, float, float*, float*, bool*);
template void ray_aabb_intersect<double>(int64_t, int64_t, const double*, const double*,
                                         const double*, double, double, double, double*, double*,
                                         bool*);

// Rays differ a lot in length (misses cost nothing, grazing rays a few steps), hence dynamic
// scheduling in chunks of 64 rays. A ray is owned by one thread in each pass; the fill pass
// writes only the slice [starts[r], starts[r] + counts[r]) that the count pass sized, no atomics.
void ray_march_count(int64_t R, const MarchGrid& g, const MarchRays& rays, int64_t* counts) {
  const MarchBox box = march_box(g.roi_aabb);
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t r = 0; r < R; ++r) {
    MarchCount count;
    march_ray(g, box, rays, r, count);
    counts[r] = count.n;
  }
}

void ray_march_fill(int64_t R, const MarchGrid& g, const MarchRays& rays, const int64_t* starts,
                    const int64_t* counts, int64_t* ray_indices, float* t_starts, float* t_ends) {
  const MarchBox box = march_box(g.roi_aabb);
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t r = 0; r < R; ++r)
    march_fill_ray(g, box, rays, r, starts[r], counts[r], ray_indices, t_starts, t_ends);
}

}  // namespace cpu
}  // namespace pe
