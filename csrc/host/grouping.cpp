// gather and grouping host functions (see host/common.h). Grouping is gather of the flat
// [B, M K] indices, reshaped. Indices are clamped into [0, N - 1] by the kernels (and here before
// the deterministic sort, so that the segments are those of the clamped indices).
#include "host/grouping.h"

#include "host/common.h"
#include "host/segments.h"
#include "pyengine/grouping.h"

namespace pe {
namespace host {

Tensor gather_fwd(const Tensor& features_in, const Tensor& indices_in, bool deterministic) {
  (void)deterministic;  // a gather: no reduction
  const Inputs in{"gather_fwd", features_in.device()};
  const Tensor f = in(features_in, "features", features_in.scalar_type(), {-1, -1, -1});
  const int64_t B = f.size(0), C = f.size(1), N = f.size(2);
  const Tensor idx = in(indices_in, "indices", at::kInt, {B, -1});
  const int64_t L = idx.size(1);
  Tensor out = at::empty({B, C, L}, f.options());
  if (B * C * L == 0) return out;
  dispatch_float(f.scalar_type(), in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(f, in.op,
                  PE_CUDA(cuda::gather_fwd<T>(B, C, N, L, ptr<const T>(f), ptr<const int32_t>(idx), ptr<T>(out),
                                              stream)),
                  [&] { cpu::gather_fwd<T>(B, C, N, L, ptr<const T>(f), ptr<const int32_t>(idx), ptr<T>(out)); });
  });
  return out;
}

Tensor gather_bwd(const Tensor& g_out, const Tensor& features, const Tensor& indices_in, bool deterministic,
                  bool need_features) {
  if (!need_features) return Tensor();
  const Inputs in{"gather_bwd", features.device()};
  const auto dt = features.scalar_type();
  TORCH_CHECK_VALUE(features.dim() == 3, in.op, ": features must be [B, C, N], got ", shape_str(features.sizes()));
  const int64_t B = features.size(0), C = features.size(1), N = features.size(2);
  const Tensor idx = in(indices_in, "indices", at::kInt, {B, -1});
  const int64_t L = idx.size(1);
  const Tensor go = in(g_out.to(dt), "g_out", dt, {B, C, L});
  Tensor gf = at::zeros({B, C, N}, features.options());
  if (B * C * N * L == 0) return gf;
  dispatch_float(dt, in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(go, in.op, PE_CUDA([&] {
                    Tensor order, start;
                    if (deterministic) std::tie(order, start) = key_segments(idx.clamp(0, N - 1), N);
                    return cuda::gather_bwd<T>(B, C, N, L, ptr<const T>(go), ptr<const int32_t>(idx),
                                               ptr<const int64_t>(order), ptr<const int64_t>(start), ptr<T>(gf),
                                               stream);
                  }()),
                  [&] { cpu::gather_bwd<T>(B, C, N, L, ptr<const T>(go), ptr<const int32_t>(idx), ptr<T>(gf)); });
  });
  return gf;
}

namespace {
Tensor flat_indices(const char* op, const Tensor& indices, int64_t B) {
  TORCH_CHECK_VALUE(indices.dim() == 3 && indices.size(0) == B, op, ": indices must be [B, M, K] with B = ",
                    std::to_string(B), ", got ", shape_str(indices.sizes()));
  return indices.reshape({B, indices.size(1) * indices.size(2)});
}
}  // namespace

Tensor grouping_fwd(const Tensor& features, const Tensor& indices, bool deterministic) {
  TORCH_CHECK_VALUE(features.dim() == 3, "grouping_fwd: features must be [B, C, N], got ",
                    shape_str(features.sizes()));
  const int64_t B = features.size(0), C = features.size(1);
  const Tensor out = gather_fwd(features, flat_indices("grouping_fwd", indices, B), deterministic);
  return out.view({B, C, indices.size(1), indices.size(2)});
}

Tensor grouping_bwd(const Tensor& g_out, const Tensor& features, const Tensor& indices, bool deterministic,
                    bool need_features) {
  if (!need_features) return Tensor();
  TORCH_CHECK_VALUE(features.dim() == 3, "grouping_bwd: features must be [B, C, N], got ",
                    shape_str(features.sizes()));
  const int64_t B = features.size(0), C = features.size(1);
  const Tensor flat = flat_indices("grouping_bwd", indices, B);
  return gather_bwd(g_out.reshape({B, C, flat.size(1)}), features, flat, deterministic, true);
}

}  // namespace host
}  // namespace pe
