// gather and grouping host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

namespace pe {
namespace host {
using at::Tensor;

// features [B, C, N] float32 / float64, indices [B, L] int32 -> [B, C, L].
Tensor gather_fwd(const Tensor& features, const Tensor& indices, bool deterministic);
// -> grad_features [B, C, N] | undefined; deterministic: the sorted-segment sums on CUDA (the
// CPU kernel always is).
Tensor gather_bwd(const Tensor& g_out, const Tensor& features, const Tensor& indices, bool deterministic,
                  bool need_features);

// features [B, C, N], indices [B, M, K] int32 -> [B, C, M, K]: gather of the flat indices.
Tensor grouping_fwd(const Tensor& features, const Tensor& indices, bool deterministic);
Tensor grouping_bwd(const Tensor& g_out, const Tensor& features, const Tensor& indices, bool deterministic,
                    bool need_features);

}  // namespace host
}  // namespace pe
