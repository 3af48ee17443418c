// ray_aabb_intersect / ray_march host code: tensor checks, output allocation, the exclusive scan
// between the two marching passes, CPU / CUDA dispatch. The Python layer (pyengine/ops) checks
// the same things with friendlier messages; these checks guard direct calls into pyengine._C.
#include "host/common.h"
#include "host/ray_march.h"

#include "pyengine/ray_march.h"


namespace pe {
namespace host {
namespace {

using torch::Tensor;

void check_rays(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == 3, op, ": ", name, " must be [N, 3], got ",
                    t.sizes());
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op, const char* name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", name, " is on ", b.device(),
                    " but rays_o on ", a.device());
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> ray_aabb_intersect(const Tensor& rays_o_in,
                                                      const Tensor& rays_d_in,
                                                      const Tensor& aabbs_in, double near_plane,
                                                      double far_plane, double miss_value) {
  const char* op = "ray_aabb_intersect";
  check_rays(rays_o_in, op, "rays_o");
  check_rays(rays_d_in, op, "rays_d");
  TORCH_CHECK_VALUE(aabbs_in.dim() == 2 && aabbs_in.size(1) == 6, op,
                    ": aabbs must be [M, 6], got ", aabbs_in.sizes());
  TORCH_CHECK_VALUE(rays_d_in.size(0) == rays_o_in.size(0), op, ": rays_d must be [",
                    rays_o_in.size(0), ", 3] like rays_o, got ", rays_d_in.sizes());
  const auto dtype = rays_o_in.scalar_type();
  TORCH_CHECK_TYPE(dtype == torch::kFloat32 || dtype == torch::kFloat64, op,
                   ": rays_o must be float32 or float64, got ", dtype);
  TORCH_CHECK_TYPE(rays_d_in.scalar_type() == dtype && aabbs_in.scalar_type() == dtype, op,
                   ": rays_o, rays_d and aabbs must share one dtype");
  check_same_device(rays_o_in, rays_d_in, op, "rays_d");
  check_same_device(rays_o_in, aabbs_in, op, "aabbs");
  const Tensor rays_o = rays_o_in.contiguous(), rays_d = rays_d_in.contiguous();
  const Tensor aabbs = aabbs_in.contiguous();
  const int64_t N = rays_o.size(0), M = aabbs.size(0);
  Tensor t_mins = torch::empty({N, M}, rays_o.options());
  Tensor t_maxs = torch::empty({N, M}, rays_o.options());
  Tensor hits = torch::empty({N, M}, rays_o.options().dtype(torch::kBool));
  if (N * M == 0) return {t_mins, t_maxs, hits};
  if (on_device(rays_o)) {
#ifdef PE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(rays_o.device());
    check_cuda(pe::cuda::ray_aabb_intersect(
                   N, M, dtype == torch::kFloat64, rays_o.data_ptr(), rays_d.data_ptr(),
                   aabbs.data_ptr(), near_plane, far_plane, miss_value, t_mins.data_ptr(),
                   t_maxs.data_ptr(), hits.data_ptr<bool>(),
                   c10::cuda::getCurrentCUDAStream().stream()),
               op, "launch");
#else
    TORCH_CHECK(false, op, ": pyengine._C was built without CUDA");
#endif
  } else if (dtype == torch::kFloat64) {
    pe::cpu::ray_aabb_intersect<double>(N, M, rays_o.data_ptr<double>(), rays_d.data_ptr<double>(),
                                        aabbs.data_ptr<double>(), near_plane, far_plane,
                                        miss_value, t_mins.data_ptr<double>(),
                                        t_maxs.data_ptr<double>(), hits.data_ptr<bool>());
  } else {
    // the planes and miss_value are rounded to float32 once, as the reference does
    pe::cpu::ray_aabb_intersect<float>(N, M, rays_o.data_ptr<float>(), rays_d.data_ptr<float>(),
                                       aabbs.data_ptr<float>(), static_cast<float>(near_plane),
                                       static_cast<float>(far_plane),
                                       static_cast<float>(miss_value), t_mins.data_ptr<float>(),
                                       t_maxs.data_ptr<float>(), hits.data_ptr<bool>());
  }
  return {t_mins, t_maxs, hits};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> ray_march(
    const Tensor& rays_o_in, const Tensor& rays_d_in, const Tensor& t_min_in,
    const Tensor& t_max_in, const Tensor& binaries_in, const Tensor& roi_aabb, double step_size,
    double cone_angle, const std::optional<Tensor>& jitter_in) {
  const char* op = "ray_march";
  check_rays(rays_o_in, op, "rays_o");
  check_rays(rays_d_in, op, "rays_d");
  const int64_t R = rays_o_in.size(0);
  TORCH_CHECK_VALUE(rays_d_in.size(0) == R, op, ": rays_d must be [", R, ", 3], got ",
                    rays_d_in.sizes());
  TORCH_CHECK_VALUE(t_min_in.dim() == 1 && t_min_in.size(0) == R, op, ": t_min must be [", R,
                    "], got ", t_min_in.sizes());
  TORCH_CHECK_VALUE(t_max_in.dim() == 1 && t_max_in.size(0) == R, op, ": t_max must be [", R,
                    "], got ", t_max_in.sizes());
  TORCH_CHECK_VALUE(binaries_in.dim() == 4, op, ": binaries must be [L, X, Y, Z], got ",
                    binaries_in.sizes());
  TORCH_CHECK_TYPE(binaries_in.scalar_type() == torch::kBool, op, ": binaries must be bool, got ",
                   binaries_in.scalar_type());
  for (int a = 0; a < 4; ++a)
    TORCH_CHECK_VALUE(binaries_in.size(a) >= 1 && binaries_in.size(a) < (1 << 30), op,
                      ": binaries must have sizes in [1, 2^30), got ", binaries_in.sizes());
  TORCH_CHECK_VALUE(roi_aabb.dim() == 1 && roi_aabb.size(0) == 6, op,
                    ": roi_aabb must be [6], got ", roi_aabb.sizes());
  TORCH_CHECK_VALUE(step_size > 0, op, ": step_size must be > 0, got ", step_size);
  TORCH_CHECK_VALUE(cone_angle >= 0, op, ": cone_angle must be >= 0, got ", cone_angle);
  for (const Tensor* t : {&rays_o_in, &rays_d_in, &t_min_in, &t_max_in, &roi_aabb})
    TORCH_CHECK_TYPE(t->scalar_type() == torch::kFloat32, op,
                     ": rays_o, rays_d, t_min, t_max and roi_aabb must be float32, got ",
                     t->scalar_type());
  check_same_device(rays_o_in, rays_d_in, op, "rays_d");
  check_same_device(rays_o_in, t_min_in, op, "t_min");
  check_same_device(rays_o_in, t_max_in, op, "t_max");
  check_same_device(rays_o_in, binaries_in, op, "binaries");
  Tensor jitter;
  if (jitter_in.has_value() && jitter_in->defined()) {
    jitter = jitter_in->contiguous();
    TORCH_CHECK_VALUE(jitter.dim() == 1 && jitter.size(0) == R, op, ": jitter must be [", R,
                      "], got ", jitter.sizes());
    TORCH_CHECK_TYPE(jitter.scalar_type() == torch::kFloat32, op, ": jitter must be float32, got ",
                     jitter.scalar_type());
    check_same_device(rays_o_in, jitter, op, "jitter");
  }

  // The roi is six numbers: read it on the host (a 24-byte copy for CUDA tensors).
  const Tensor roi = roi_aabb.to(torch::kCPU).contiguous();
  const float* b = roi.data_ptr<float>();
  pe::MarchGrid g{};
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK_VALUE(b[a + 3] > b[a], op, ": roi_aabb must have max > min on every axis, got ",
                      roi_aabb.cpu());
    g.center[a] = (b[a] + b[a + 3]) * 0.5f;  // the reference's float32 operations, in order
    g.half[a] = (b[a + 3] - b[a]) * 0.5f;
    g.res[a] = static_cast<int32_t>(binaries_in.size(a + 1));
  }
  g.levels = static_cast<int32_t>(binaries_in.size(0));
  g.step_size = static_cast<float>(step_size);
  g.cone_angle = static_cast<float>(cone_angle);

  const Tensor rays_o = rays_o_in.contiguous(), rays_d = rays_d_in.contiguous();
  const Tensor t_min = t_min_in.contiguous(), t_max = t_max_in.contiguous();
  const Tensor binaries = binaries_in.contiguous();
  g.binaries = binaries.data_ptr<bool>();
  const float* jit = jitter.defined() ? jitter.data_ptr<float>() : nullptr;
  const auto fopts = rays_o.options();
  const auto lopts = fopts.dtype(torch::kInt64);

  Tensor counts = torch::empty({R}, lopts);
#ifdef PE_WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;
  if (on_device(rays_o)) guard.emplace(rays_o.device());
#endif
  if (on_device(rays_o)) {
#ifdef PE_WITH_CUDA
    check_cuda(pe::cuda::ray_march_count(R, g, rays_o.data_ptr<float>(), rays_d.data_ptr<float>(),
                                         t_min.data_ptr<float>(), t_max.data_ptr<float>(), jit,
                                         counts.data_ptr<int64_t>(),
                                         c10::cuda::getCurrentCUDAStream().stream()),
               op, "launch");
#else
    TORCH_CHECK(false, op, ": pyengine._C was built without CUDA");
#endif
  } else {
    pe::cpu::ray_march_count(R, g, rays_o.data_ptr<float>(), rays_d.data_ptr<float>(),
                             t_min.data_ptr<float>(), t_max.data_ptr<float>(), jit,
                             counts.data_ptr<int64_t>());
  }

  // Exclusive scan of the counts; the total sizes the outputs (a device sync on CUDA).
  const Tensor ends = counts.cumsum(0);
  const Tensor starts = ends - counts;
  const int64_t S = R > 0 ? ends[R - 1].item<int64_t>() : 0;
  Tensor ray_indices = torch::empty({S}, lopts);
  Tensor t_starts = torch::empty({S}, fopts);
  Tensor t_ends = torch::empty({S}, fopts);
  if (S > 0) {
    if (on_device(rays_o)) {
#ifdef PE_WITH_CUDA
      check_cuda(pe::cuda::ray_march_fill(
                     R, g, rays_o.data_ptr<float>(), rays_d.data_ptr<float>(),
                     t_min.data_ptr<float>(), t_max.data_ptr<float>(), jit,
                     starts.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                     ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<float>(),
                     t_ends.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream()),
                 op, "launch");
#endif
    } else {
      pe::cpu::ray_march_fill(R, g, rays_o.data_ptr<float>(), rays_d.data_ptr<float>(),
                              t_min.data_ptr<float>(), t_max.data_ptr<float>(), jit,
                              starts.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                              ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<float>(),
                              t_ends.data_ptr<float>());
    }
  }
  return {torch::stack({starts, counts}, 1), ray_indices, t_starts, t_ends};
}

}  // namespace host
}  // namespace pe
