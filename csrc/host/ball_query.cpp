// ball_query host function (see host/common.h).
#include "host/ball_query.h"

#include <limits>
#include <string>

#include "host/common.h"
#include "pyengine/ball_query.h"

namespace pe {
namespace host {

Tensor ball_query(const Tensor& centers_coords, const Tensor& points_coords, double radius, int64_t num_neighbors) {
  const Inputs in{"ball_query", centers_coords.device()};
  const auto dt = centers_coords.scalar_type();
  const Tensor centers = in(centers_coords, "centers_coords", dt, {-1, 3, -1});
  const int64_t B = centers.size(0), M = centers.size(2), K = num_neighbors;
  const Tensor points = in(points_coords, "points_coords", dt, {B, 3, -1});
  const int64_t N = points.size(2);
  TORCH_CHECK_VALUE(K >= 1, in.op, ": num_neighbors must be >= 1, got ", std::to_string(K));
  TORCH_CHECK_VALUE(N <= std::numeric_limits<int32_t>::max(), in.op, ": too many points for int32 indices");
  Tensor out = at::empty({B, M, K}, centers.options().dtype(at::kInt));
  if (B * M == 0) return out;
  dispatch_float(dt, in.op, [&](auto z) {
    using T = decltype(z);
    const T r = static_cast<T>(radius), r2 = r * r;  // rounded in T, as the reference's
    const T *c = ptr<const T>(centers), *p = ptr<const T>(points);
    run_on_device(centers, in.op, PE_CUDA(cuda::ball_query<T>(B, M, N, K, r2, c, p, ptr<int32_t>(out), stream)),
                  [&] { cpu::ball_query<T>(B, M, N, K, r2, c, p, ptr<int32_t>(out)); });
  });
  return out;
}

}  // namespace host
}  // namespace pe
