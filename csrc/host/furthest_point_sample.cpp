// furthest_point_sample host function (see host/common.h): checks, the CUDA workspace (distances
// and the per-step keys), the CPU / CUDA choice.
#include "host/furthest_point_sample.h"

#include <limits>

#include "host/common.h"
#include "pyengine/furthest_point_sample.h"

namespace pe {
namespace host {

Tensor furthest_point_sample(const Tensor& coords_in, int64_t num_samples) {
  const Inputs in{"furthest_point_sample", coords_in.device()};
  const Tensor coords = in(coords_in, "coords", coords_in.scalar_type(), {-1, 3, -1});
  const int64_t B = coords.size(0), N = coords.size(2), M = num_samples;
  TORCH_CHECK_VALUE(M >= 0 && M <= N, in.op, ": num_samples must be in [0, N] = [0, ", std::to_string(N),
                    "], got ", std::to_string(M));
  TORCH_CHECK_VALUE(N <= std::numeric_limits<int32_t>::max(), in.op, ": too many points for int32 indices");
  Tensor idx = at::empty({B, M}, coords.options().dtype(at::kInt));
  if (B * M == 0) return idx;
  dispatch_float(coords.scalar_type(), in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(coords, in.op, PE_CUDA([&] {
                    Tensor dist = at::full({B, N}, std::numeric_limits<T>::infinity(), coords.options());
                    Tensor keys = at::zeros({B, M}, coords.options().dtype(at::kLong));
                    idx.fill_(std::numeric_limits<int32_t>::max());
                    return cuda::furthest_point_sample<T>(B, N, M, ptr<const T>(coords), ptr<T>(dist),
                                                          ptr<unsigned long long>(keys), ptr<int32_t>(idx), stream);
                  }()),
                  [&] { cpu::furthest_point_sample<T>(B, N, M, ptr<const T>(coords), ptr<int32_t>(idx)); });
  });
  return idx;
}

}  // namespace host
}  // namespace pe
