// ray_aabb_intersect / ray_march host functions (see host/common.h for the pattern).
//
// ray_march: the count pass, an exclusive scan of the counts (torch.cumsum), the fill pass.
// Reading the total that sizes the outputs is its only device synchronisation: the kernels read
// roi_aabb where it lies, and the fill pass writes no more than the count pass counted. With a
// fixed capacity there is none: each ray's count is cut to what is left of the capacity at its
// start (on the device), the fill pass writes those prefixes, and the outputs, sized by the
// capacity, start out as padding (ray R - 1, t = 0) that the fill pass overwrites.
#include "host/ray_march.h"

#include "host/common.h"
#include "pyengine/ray_march.h"

namespace pe {
namespace host {

std::tuple<Tensor, Tensor, Tensor> ray_aabb_intersect(const Tensor& rays_o, const Tensor& rays_d,
                                                      const Tensor& aabbs, double near_plane,
                                                      double far_plane, double miss_value) {
  const char* op = "ray_aabb_intersect";
  const Inputs in{op, rays_o.device()};
  const auto dt = rays_o.scalar_type();
  const Tensor o = in(rays_o, "rays_o", dt, {-1, 3});
  const Tensor d = in(rays_d, "rays_d", dt, {o.size(0), 3});
  const Tensor boxes = in(aabbs, "aabbs", dt, {-1, 6});
  const int64_t N = o.size(0), M = boxes.size(0);
  Tensor t_mins = at::empty({N, M}, o.options()), t_maxs = at::empty({N, M}, o.options());
  Tensor hits = at::empty({N, M}, o.options().dtype(at::kBool));
  dispatch_float(dt, op, [&](auto z) {
    using T = decltype(z);  // the planes and miss_value are rounded to T once, as the reference
    const T lo = static_cast<T>(near_plane), hi = static_cast<T>(far_plane);
    const T miss = static_cast<T>(miss_value);
    const T *po = ptr<const T>(o), *pd = ptr<const T>(d), *pb = ptr<const T>(boxes);
    T *mins = ptr<T>(t_mins), *maxs = ptr<T>(t_maxs);
    bool* h = ptr<bool>(hits);
    run_on_device(
        o, op,
        PE_CUDA(cuda::ray_aabb_intersect(N, M, po, pd, pb, lo, hi, miss, mins, maxs, h, stream)),
        [&] { cpu::ray_aabb_intersect(N, M, po, pd, pb, lo, hi, miss, mins, maxs, h); });
  });
  return {t_mins, t_maxs, hits};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> ray_march(
    const Tensor& rays_o, const Tensor& rays_d, const Tensor& t_min, const Tensor& t_max,
    const Tensor& binaries, const Tensor& roi_aabb, double step_size, double cone_angle,
    const std::optional<Tensor>& jitter, int64_t max_steps, int64_t capacity) {
  const char* op = "ray_march";
  const Inputs in{op, rays_o.device()};
  const auto f32 = at::kFloat;
  const Tensor o = in(rays_o, "rays_o", f32, {-1, 3});
  const int64_t R = o.size(0);
  const Tensor d = in(rays_d, "rays_d", f32, {R, 3}), t0 = in(t_min, "t_min", f32, {R}),
               t1 = in(t_max, "t_max", f32, {R}), roi = in(roi_aabb, "roi_aabb", f32, {6}),
               bins = in(binaries, "binaries", at::kBool, {-1, -1, -1, -1});
  const bool jittered = jitter.has_value() && jitter->defined();
  const Tensor jit = jittered ? in(*jitter, "jitter", f32, {R}) : Tensor();
  for (int a = 0; a < 4; ++a)
    TORCH_CHECK_VALUE(bins.size(a) >= 1 && bins.size(a) < (1 << 30), op,
                      ": binaries must have sizes in [1, 2^30)");
  TORCH_CHECK_VALUE(max_steps >= 1, op, ": max_steps must be >= 1, got ",
                    std::to_string(max_steps));
  TORCH_CHECK_VALUE(capacity >= -1, op, ": capacity must be -1 (sized by the data) or >= 0, got ",
                    std::to_string(capacity));
  const MarchGrid g{ptr<const float>(roi), ptr<const bool>(bins),
                    {static_cast<int32_t>(bins.size(1)), static_cast<int32_t>(bins.size(2)),
                     static_cast<int32_t>(bins.size(3))},
                    static_cast<int32_t>(bins.size(0)), static_cast<float>(step_size),
                    static_cast<float>(cone_angle), max_steps};
  const MarchRays rays{ptr<const float>(o), ptr<const float>(d), ptr<const float>(t0),
                       ptr<const float>(t1), ptr<const float>(jit)};

  Tensor counts = at::empty({R}, o.options().dtype(at::kLong));
  int64_t* n = ptr<int64_t>(counts);
  run_on_device(o, op, PE_CUDA(cuda::ray_march_count(R, g, rays, n, stream)),
                [&] { cpu::ray_march_count(R, g, rays, n); });
  Tensor ends = counts.cumsum(0), starts = ends - counts;
  const Tensor wanted = R > 0 ? ends[R - 1].clone() : at::zeros({}, counts.options());
  Tensor ray_indices, t_starts, t_ends;
  int64_t S;
  if (capacity < 0) {
    S = wanted.item<int64_t>();  // the one device sync
    ray_indices = at::empty({S}, counts.options());
    t_starts = at::empty({S}, o.options());
    t_ends = at::empty({S}, o.options());
  } else {  // cut each ray to what is left at its start; the rest of the outputs is padding
    S = capacity;
    counts = at::minimum(counts, (capacity - starts).clamp_min(0));
    starts = at::clamp_max(starts, capacity);
    n = ptr<int64_t>(counts);
    ray_indices = at::full({S}, R > 0 ? R - 1 : 0, counts.options());
    t_starts = at::zeros({S}, o.options());
    t_ends = at::zeros({S}, o.options());
  }
  if (S > 0) {
    const int64_t* s0 = ptr<const int64_t>(starts);
    int64_t* idx = ptr<int64_t>(ray_indices);
    float *ts = ptr<float>(t_starts), *te = ptr<float>(t_ends);
    run_on_device(o, op, PE_CUDA(cuda::ray_march_fill(R, g, rays, s0, n, idx, ts, te, stream)),
                  [&] { cpu::ray_march_fill(R, g, rays, s0, n, idx, ts, te); });
  }
  return {at::stack({starts, counts}, 1), ray_indices, t_starts, t_ends, wanted};
}

}  // namespace host
}  // namespace pe
