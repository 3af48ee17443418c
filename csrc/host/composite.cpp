// composite host functions (see host/common.h). The Python layer has promoted the floating inputs
// to one dtype and checked packed_info's values; here only what the kernels index with is checked
// (no device sync), and the kernels clamp each ray's range into [0, S].
#include "host/composite.h"

#include "host/common.h"
#include "pyengine/composite.h"

namespace pe {
namespace host {
namespace {

// Both directions' inputs, contiguous: packed_info [R, 2] int64; t_starts, t_ends, x [S] and
// values [S, C] in t_starts' dtype.
struct Samples {
  Inputs in;
  Tensor t0, v, pi, t1, x;
  int64_t R, S;
  int C;
  Samples(const char* op, const Tensor& packed_info, const Tensor& t_starts, const Tensor& t_ends,
          const Tensor& x_, const Tensor& values)
      : in{op, t_starts.device()},
        t0(in(t_starts, "t_starts", t_starts.scalar_type(), {-1})),
        v(in(values, "values", t0.scalar_type(), {t0.size(0), -1})),
        pi(in(packed_info, "packed_info", at::kLong, {-1, 2})),
        t1(in(t_ends, "t_ends", t0.scalar_type(), {t0.size(0)})),
        x(in(x_, "x", t0.scalar_type(), {t0.size(0)})),
        R(pi.size(0)), S(t0.size(0)), C(static_cast<int>(v.size(1))) {
    TORCH_CHECK_VALUE(v.size(1) <= INT32_MAX, op, ": too many value channels");
  }
};

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> composite_fwd(
    const Tensor& packed_info, const Tensor& t_starts, const Tensor& t_ends, const Tensor& x,
    const Tensor& values, bool alpha_mode) {
  const Samples s("composite_fwd", packed_info, t_starts, t_ends, x, values);
  const auto o = s.t0.options();
  // covered samples are overwritten; uncovered ones keep weight = alpha = 0, transmittance = 1
  Tensor w = at::zeros({s.S}, o), tr = at::ones({s.S}, o), a = at::zeros({s.S}, o);
  Tensor acc = at::empty({s.R, s.C}, o), op = at::empty({s.R}, o),
         dep = at::empty({s.R}, o);
  dispatch_float(s.t0.scalar_type(), s.in.op, [&](auto z) {
    using T = decltype(z);
    const CompositeFwdPtrs<T> p{ptr<const int64_t>(s.pi), ptr<const T>(s.t0), ptr<const T>(s.t1),
                                ptr<const T>(s.x), ptr<const T>(s.v), ptr<T>(w), ptr<T>(tr),
                                ptr<T>(a), ptr<T>(acc), ptr<T>(op), ptr<T>(dep)};
    run_on_device(s.t0, s.in.op, PE_CUDA(cuda::composite_fwd(s.R, s.S, s.C, alpha_mode, p, stream)),
                  [&] { cpu::composite_fwd(s.R, s.S, s.C, alpha_mode, p); });
  });
  return {w, tr, a, acc, op, dep};
}

std::tuple<Tensor, Tensor> composite_bwd(
    const Tensor& g_weights, const Tensor& g_trans, const Tensor& g_alphas, const Tensor& g_acc,
    const Tensor& g_opacity, const Tensor& g_depth, const Tensor& packed_info,
    const Tensor& t_starts, const Tensor& t_ends, const Tensor& x, const Tensor& values,
    const Tensor& trans, bool alpha_mode, bool need_x, bool need_values) {
  const Samples s("composite_bwd", packed_info, t_starts, t_ends, x, values);
  const auto dt = s.t0.scalar_type();
  const auto in = [&](const Tensor& t, const char* name, c10::IntArrayRef sizes) {
    return s.in(t.to(dt), name, dt, sizes);  // the upstream gradients may come in another dtype
  };
  const Tensor tr = in(trans, "trans", {s.S}), gw = in(g_weights, "g_weights", {s.S}),
               gt = in(g_trans, "g_trans", {s.S}), ga = in(g_alphas, "g_alphas", {s.S}),
               gacc = in(g_acc, "g_acc", {s.R, s.C}), gop = in(g_opacity, "g_opacity", {s.R}),
               gdep = in(g_depth, "g_depth", {s.R});
  need_values = need_values && s.C > 0;
  Tensor gx = need_x ? at::zeros({s.S}, s.t0.options()) : Tensor();
  Tensor gv = need_values ? at::zeros({s.S, s.C}, s.t0.options()) : Tensor();
  if (!need_x && !need_values) return {gx, gv};
  dispatch_float(dt, s.in.op, [&](auto z) {
    using T = decltype(z);
    const CompositeBwdPtrs<T> p{ptr<const int64_t>(s.pi), ptr<const T>(s.t0), ptr<const T>(s.t1),
                                ptr<const T>(s.x), ptr<const T>(s.v), ptr<const T>(tr),
                                ptr<const T>(gw), ptr<const T>(gt), ptr<const T>(ga),
                                ptr<const T>(gacc), ptr<const T>(gop), ptr<const T>(gdep),
                                ptr<T>(gx), ptr<T>(gv)};
    run_on_device(s.t0, s.in.op, PE_CUDA(cuda::composite_bwd(s.R, s.S, s.C, alpha_mode, p, stream)),
                  [&] { cpu::composite_bwd(s.R, s.S, s.C, alpha_mode, p); });
  });
  return {gx, gv};
}

}  // namespace host
}  // namespace pe
