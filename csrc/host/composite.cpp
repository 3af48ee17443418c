// composite host code: tensor checks, output allocation, CPU / CUDA dispatch.
//
// The Python layer (pyengine/ops/composite.py) has already promoted every floating input to one
// dtype and checked packed_info's values; here only shapes, dtypes and devices are checked, which
// costs no device synchronisation. The kernels clamp each ray's range into [0, S], so a malformed
// packed_info that gets this far cannot make them access memory out of bounds.
#include "host/common.h"
#include "host/composite.h"

#include "pyengine/composite.h"


namespace pe {
namespace host {
namespace {

using torch::Tensor;

struct Dims {
  int64_t R, S;
  int C;
  torch::ScalarType T;
};

void check_float_vec(const Tensor& t, const char* name, int64_t S, torch::ScalarType T,
                     const torch::Device& dev) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == S, "composite: ", name, " must be [", S,
                    "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == T, "composite: ", name, " must be ", T, " like t_starts, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == dev, "composite: ", name, " is on ", t.device(),
                    " but t_starts on ", dev);
}

Dims check_inputs(const Tensor& packed_info, const Tensor& t_starts, const Tensor& t_ends,
                  const Tensor& x, const Tensor& values) {
  TORCH_CHECK_VALUE(packed_info.dim() == 2 && packed_info.size(1) == 2,
                    "composite: packed_info must be [R, 2], got ", packed_info.sizes());
  TORCH_CHECK_TYPE(packed_info.scalar_type() == torch::kInt64,
                   "composite: packed_info must be int64, got ", packed_info.scalar_type());
  TORCH_CHECK_VALUE(t_starts.dim() == 1, "composite: t_starts must be [S], got ", t_starts.sizes());
  const auto T = t_starts.scalar_type();
  TORCH_CHECK_TYPE(T == torch::kFloat32 || T == torch::kFloat64,
                   "composite: t_starts must be float32 or float64, got ", T);
  const int64_t S = t_starts.size(0);
  const auto dev = t_starts.device();
  check_float_vec(t_ends, "t_ends", S, T, dev);
  check_float_vec(x, "densities / alphas", S, T, dev);
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(0) == S, "composite: values must be [", S,
                    ", C], got ", values.sizes());
  TORCH_CHECK_TYPE(values.scalar_type() == T, "composite: values must be ", T, ", got ",
                   values.scalar_type());
  TORCH_CHECK_VALUE(values.device() == dev && packed_info.device() == dev,
                    "composite: all tensors must be on one device; t_starts is on ", dev);
  TORCH_CHECK_VALUE(values.size(1) <= INT32_MAX, "composite: too many value channels");
  return {packed_info.size(0), S, static_cast<int>(values.size(1)), T};
}

void check_grad(const Tensor& g, const char* name, std::vector<int64_t> shape, const Tensor& like) {
  TORCH_CHECK_VALUE(g.sizes() == torch::IntArrayRef(shape), "composite_bwd: ", name,
                    " must have shape ", torch::IntArrayRef(shape), ", got ", g.sizes());
  TORCH_CHECK_VALUE(g.device() == like.device(), "composite_bwd: ", name, " is on ", g.device(),
                    " but t_starts on ", like.device());
}

template <typename T>
const T* cptr(const Tensor& t) {
  return t.numel() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}
template <typename T>
T* mptr(const Tensor& t) {
  return t.defined() && t.numel() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

template <typename T>
pe::CompositeFwdPtrs<T> fwd_ptrs(const Tensor& pi, const Tensor& t0, const Tensor& t1,
                                 const Tensor& x, const Tensor& v, const Tensor& w,
                                 const Tensor& tr, const Tensor& a, const Tensor& acc,
                                 const Tensor& op, const Tensor& dep) {
  return {cptr<int64_t>(pi), cptr<T>(t0),  cptr<T>(t1),  cptr<T>(x),
          cptr<T>(v),        mptr<T>(w),   mptr<T>(tr),  mptr<T>(a),
          mptr<T>(acc),      mptr<T>(op),  mptr<T>(dep)};
}

// grad_x / grad_values may be undefined (not needed): null pointers.
template <typename T>
pe::CompositeBwdPtrs<T> bwd_ptrs(const Tensor& pi, const Tensor& t0, const Tensor& t1,
                                 const Tensor& x, const Tensor& v, const Tensor& tr,
                                 const Tensor& gw, const Tensor& gt, const Tensor& ga,
                                 const Tensor& gacc, const Tensor& gop, const Tensor& gdep,
                                 const Tensor& grad_x, const Tensor& grad_v) {
  return {cptr<int64_t>(pi), cptr<T>(t0),   cptr<T>(t1),   cptr<T>(x),     cptr<T>(v),
          cptr<T>(tr),       cptr<T>(gw),   cptr<T>(gt),   cptr<T>(ga),    cptr<T>(gacc),
          cptr<T>(gop),      cptr<T>(gdep), mptr<T>(grad_x), mptr<T>(grad_v)};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> composite_fwd(
    const Tensor& packed_info_in, const Tensor& t_starts_in, const Tensor& t_ends_in,
    const Tensor& x_in, const Tensor& values_in, bool alpha_mode) {
  const Dims d = check_inputs(packed_info_in, t_starts_in, t_ends_in, x_in, values_in);
  const Tensor pi = packed_info_in.contiguous(), t0 = t_starts_in.contiguous(),
               t1 = t_ends_in.contiguous(), x = x_in.contiguous(), v = values_in.contiguous();
  const auto opts = t0.options();
  // covered samples are overwritten; uncovered ones keep weight = alpha = 0, transmittance = 1
  Tensor weights = torch::zeros({d.S}, opts), trans = torch::ones({d.S}, opts),
         alphas = torch::zeros({d.S}, opts);
  Tensor acc = torch::empty({d.R, d.C}, opts), opacity = torch::empty({d.R}, opts),
         depth = torch::empty({d.R}, opts);
  if (d.R > 0) {
    if (on_device(t0)) {
#ifdef PE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(t0.device());
      check_cuda(pe::cuda::composite_fwd(
                     d.R, d.S, d.C, alpha_mode,
                     d.T == torch::kFloat64 ? pe::cuda::kCompositeF64 : pe::cuda::kCompositeF32,
                     fwd_ptrs<void>(pi, t0, t1, x, v, weights, trans, alphas, acc, opacity, depth),
                     c10::cuda::getCurrentCUDAStream().stream()),
                 "composite", "forward");
#else
      TORCH_CHECK(false, "composite: pyengine._C was built without CUDA");
#endif
    } else if (d.T == torch::kFloat64) {
      pe::cpu::composite_fwd<double>(
          d.R, d.S, d.C, alpha_mode,
          fwd_ptrs<double>(pi, t0, t1, x, v, weights, trans, alphas, acc, opacity, depth));
    } else {
      pe::cpu::composite_fwd<float>(
          d.R, d.S, d.C, alpha_mode,
          fwd_ptrs<float>(pi, t0, t1, x, v, weights, trans, alphas, acc, opacity, depth));
    }
  }
  return {weights, trans, alphas, acc, opacity, depth};
}

std::tuple<Tensor, Tensor> composite_bwd(const Tensor& g_weights, const Tensor& g_trans,
                                         const Tensor& g_alphas, const Tensor& g_acc,
                                         const Tensor& g_opacity, const Tensor& g_depth,
                                         const Tensor& packed_info_in, const Tensor& t_starts_in,
                                         const Tensor& t_ends_in, const Tensor& x_in,
                                         const Tensor& values_in, const Tensor& trans_in,
                                         bool alpha_mode, bool need_x, bool need_values) {
  const Dims d = check_inputs(packed_info_in, t_starts_in, t_ends_in, x_in, values_in);
  check_float_vec(trans_in, "transmittance", d.S, d.T, t_starts_in.device());
  check_grad(g_weights, "grad of weights", {d.S}, t_starts_in);
  check_grad(g_trans, "grad of transmittance", {d.S}, t_starts_in);
  check_grad(g_alphas, "grad of alphas", {d.S}, t_starts_in);
  check_grad(g_acc, "grad of accumulated", {d.R, d.C}, t_starts_in);
  check_grad(g_opacity, "grad of opacity", {d.R}, t_starts_in);
  check_grad(g_depth, "grad of depth", {d.R}, t_starts_in);
  const auto prep = [&](const Tensor& t) { return t.to(d.T).contiguous(); };
  const Tensor pi = packed_info_in.contiguous(), t0 = t_starts_in.contiguous(),
               t1 = t_ends_in.contiguous(), x = x_in.contiguous(), v = values_in.contiguous(),
               tr = trans_in.contiguous();
  const Tensor gw = prep(g_weights), gt = prep(g_trans), ga = prep(g_alphas), gacc = prep(g_acc),
               gop = prep(g_opacity), gdep = prep(g_depth);
  const auto opts = t0.options();
  need_values = need_values && d.C > 0;
  Tensor grad_x = need_x ? torch::zeros({d.S}, opts) : Tensor();
  Tensor grad_v = need_values ? torch::zeros({d.S, d.C}, opts) : Tensor();
  if (d.R > 0 && (need_x || need_values)) {
    if (on_device(t0)) {
#ifdef PE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(t0.device());
      check_cuda(pe::cuda::composite_bwd(
                     d.R, d.S, d.C, alpha_mode,
                     d.T == torch::kFloat64 ? pe::cuda::kCompositeF64 : pe::cuda::kCompositeF32,
                     bwd_ptrs<void>(pi, t0, t1, x, v, tr, gw, gt, ga, gacc, gop, gdep, grad_x, grad_v),
                     c10::cuda::getCurrentCUDAStream().stream()),
                 "composite", "backward");
#else
      TORCH_CHECK(false, "composite: pyengine._C was built without CUDA");
#endif
    } else if (d.T == torch::kFloat64) {
      pe::cpu::composite_bwd<double>(
          d.R, d.S, d.C, alpha_mode,
          bwd_ptrs<double>(pi, t0, t1, x, v, tr, gw, gt, ga, gacc, gop, gdep, grad_x, grad_v));
    } else {
      pe::cpu::composite_bwd<float>(
          d.R, d.S, d.C, alpha_mode,
          bwd_ptrs<float>(pi, t0, t1, x, v, tr, gw, gt, ga, gacc, gop, gdep, grad_x, grad_v));
    }
  }
  return {grad_x, grad_v};
}

}  // namespace host
}  // namespace pe
