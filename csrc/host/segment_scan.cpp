// segment_scan host functions (see host/common.h). The kernels clamp each segment's range into
// [0, S]; the Python layer checks types and shapes for the user.
#include "host/segment_scan.h"

#include "host/common.h"
#include "pyengine/segment_scan.h"

namespace pe {
namespace host {

Tensor segment_scan_fwd(const Tensor& x_in, const Tensor& packed_info, bool prod, bool exclusive) {
  const Inputs in{"segment_scan_fwd", x_in.device()};
  const Tensor x = in(x_in, "x", x_in.scalar_type(), {-1});
  const Tensor pi = in(packed_info, "packed_info", at::kLong, {-1, 2});
  const int64_t R = pi.size(0), S = x.size(0);
  Tensor y = prod ? at::ones_like(x) : at::zeros_like(x);
  if (R == 0 || S == 0) return y;
  dispatch_float(x.scalar_type(), in.op, [&](auto z) {
    using T = decltype(z);
    const int64_t* p = ptr<const int64_t>(pi);
    run_on_device(x, in.op,
                  PE_CUDA(cuda::segment_scan_fwd<T>(R, S, prod, exclusive, p, ptr<const T>(x), ptr<T>(y), stream)),
                  [&] { cpu::segment_scan_fwd<T>(R, S, prod, exclusive, p, ptr<const T>(x), ptr<T>(y)); });
  });
  return y;
}

Tensor segment_scan_bwd(const Tensor& grad, const Tensor& x_in, const Tensor& packed_info, bool prod, bool exclusive,
                        bool need_x) {
  if (!need_x) return Tensor();
  const Inputs in{"segment_scan_bwd", x_in.device()};
  const Tensor x = in(x_in, "x", x_in.scalar_type(), {-1});
  const Tensor g = in(grad.to(x.scalar_type()), "grad", x.scalar_type(), {x.size(0)});
  const Tensor pi = in(packed_info, "packed_info", at::kLong, {-1, 2});
  const int64_t R = pi.size(0), S = x.size(0);
  Tensor dx = at::zeros_like(x);
  if (R == 0 || S == 0) return dx;
  dispatch_float(x.scalar_type(), in.op, [&](auto z) {
    using T = decltype(z);
    const int64_t* p = ptr<const int64_t>(pi);
    run_on_device(x, in.op,
                  PE_CUDA(cuda::segment_scan_bwd<T>(R, S, prod, exclusive, p, ptr<const T>(x), ptr<const T>(g),
                                                    ptr<T>(dx), stream)),
                  [&] {
                    cpu::segment_scan_bwd<T>(R, S, prod, exclusive, p, ptr<const T>(x), ptr<const T>(g), ptr<T>(dx));
                  });
  });
  return dx;
}

}  // namespace host
}  // namespace pe
