// segment_scan host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

namespace pe {
namespace host {
using at::Tensor;

// x [S] float32 / float64, packed_info [R, 2] int64 -> y [S] (identity where no segment covers).
Tensor segment_scan_fwd(const Tensor& x, const Tensor& packed_info, bool prod, bool exclusive);
// grad of y [S], x, packed_info -> grad_x [S] (undefined when need_x is false).
Tensor segment_scan_bwd(const Tensor& grad, const Tensor& x, const Tensor& packed_info, bool prod, bool exclusive,
                        bool need_x);

}  // namespace host
}  // namespace pe
