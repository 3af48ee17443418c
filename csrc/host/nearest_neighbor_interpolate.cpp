// nearest_neighbor_interpolate host functions (see host/common.h).
#include "host/nearest_neighbor_interpolate.h"

#include <limits>

#include "host/common.h"
#include "host/segments.h"
#include "pyengine/nearest_neighbor_interpolate.h"

namespace pe {
namespace host {

std::tuple<Tensor, Tensor, Tensor> nearest_neighbor_interpolate_fwd(const Tensor& points_coords,
                                                                    const Tensor& centers_coords,
                                                                    const Tensor& centers_features,
                                                                    bool deterministic) {
  (void)deterministic;  // no reduction in the forward
  const Inputs in{"nearest_neighbor_interpolate_fwd", points_coords.device()};
  const auto dt = centers_features.scalar_type();
  const Tensor f = in(centers_features, "centers_features", dt, {-1, -1, -1});
  const int64_t B = f.size(0), C = f.size(1), M = f.size(2);
  const Tensor p = in(points_coords, "points_coords", dt, {B, 3, -1});
  const Tensor c = in(centers_coords, "centers_coords", dt, {B, 3, M});
  const int64_t N = p.size(2);
  TORCH_CHECK_VALUE(M <= std::numeric_limits<int32_t>::max(), in.op, ": too many centres for int32 indices");
  Tensor out = at::zeros({B, C, N}, f.options());
  Tensor idx = at::zeros({B, 3, N}, f.options().dtype(at::kInt));
  Tensor w = at::zeros({B, 3, N}, f.options());
  if (B * N == 0 || M == 0) return {out, idx, w};
  dispatch_float(dt, in.op, [&](auto z) {
    using T = decltype(z);
    const T *pp = ptr<const T>(p), *cp = ptr<const T>(c), *fp = ptr<const T>(f);
    run_on_device(f, in.op,
                  PE_CUDA(cuda::nearest_neighbor_interpolate_fwd<T>(B, C, N, M, pp, cp, fp, ptr<T>(out),
                                                                    ptr<int32_t>(idx), ptr<T>(w), stream)),
                  [&] {
                    cpu::nearest_neighbor_interpolate_fwd<T>(B, C, N, M, pp, cp, fp, ptr<T>(out), ptr<int32_t>(idx),
                                                             ptr<T>(w));
                  });
  });
  return {out, idx, w};
}

Tensor nearest_neighbor_interpolate_bwd(const Tensor& g_out, const Tensor& g_indices, const Tensor& g_weights,
                                        const Tensor& points_coords, const Tensor& centers_coords,
                                        const Tensor& centers_features, const Tensor& indices, const Tensor& weights,
                                        bool deterministic, bool need_centers_features) {
  (void)g_indices, (void)g_weights, (void)centers_coords;  // the weights do not depend on the features
  if (!need_centers_features) return Tensor();
  const Inputs in{"nearest_neighbor_interpolate_bwd", centers_features.device()};
  const auto dt = centers_features.scalar_type();
  TORCH_CHECK_VALUE(centers_features.dim() == 3 && points_coords.dim() == 3, in.op,
                    ": centers_features and points_coords must be 3-d");
  const int64_t B = centers_features.size(0), C = centers_features.size(1), M = centers_features.size(2),
                N = points_coords.size(2);
  const Tensor go = in(g_out.to(dt), "g_out", dt, {B, C, N});
  const Tensor idx = in(indices, "indices", at::kInt, {B, 3, N});
  const Tensor w = in(weights.to(dt), "weights", dt, {B, 3, N});
  Tensor gf = at::zeros({B, C, M}, centers_features.options());
  if (B * C * M * N == 0) return gf;
  dispatch_float(dt, in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(go, in.op, PE_CUDA([&] {
                    Tensor order, start;
                    if (deterministic) std::tie(order, start) = key_segments(idx.view({B, 3 * N}), M);
                    return cuda::nearest_neighbor_interpolate_bwd<T>(
                        B, C, N, M, ptr<const T>(go), ptr<const int32_t>(idx), ptr<const T>(w),
                        ptr<const int64_t>(order), ptr<const int64_t>(start), ptr<T>(gf), stream);
                  }()),
                  [&] {
                    cpu::nearest_neighbor_interpolate_bwd<T>(B, C, N, M, ptr<const T>(go), ptr<const int32_t>(idx),
                                                             ptr<const T>(w), ptr<T>(gf));
                  });
  });
  return gf;
}

}  // namespace host
}  // namespace pe
