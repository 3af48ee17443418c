// texture host functions (see host/common.h). Texel indices are clamped into the texture by the
// kernels whatever the coordinates, so any uv is memory-safe; the Python layer gives the
// user-facing errors.
#include "host/texture.h"

#include "host/common.h"
#include "pyengine/texture.h"

namespace pe {
namespace host {
namespace {

struct Args {
  Inputs in;
  Tensor tex, uv;
  int64_t B, h, w, Bt, Ht, Wt, C;
  int filter, boundary;

  Args(const char* op, const Tensor& tex_in, const Tensor& uv_in, int64_t filter_mode, int64_t boundary_mode)
      : in{op, tex_in.device()} {
    const auto dt = tex_in.scalar_type();
    tex = in(tex_in, "tex", dt, {-1, -1, -1, -1});
    Bt = tex.size(0), Ht = tex.size(1), Wt = tex.size(2), C = tex.size(3);
    uv = in(uv_in, "uv", dt, {-1, -1, -1, 2});
    B = uv.size(0), h = uv.size(1), w = uv.size(2);
    TORCH_CHECK_VALUE(Bt == B || Bt == 1, op, ": tex must be [1, Ht, Wt, C] or [B, Ht, Wt, C] with B = ",
                      std::to_string(B), ", got ", shape_str(tex.sizes()));
    TORCH_CHECK_VALUE(filter_mode == 0 || filter_mode == 1, op, ": filter_mode must be 0 (nearest) or 1 (linear)");
    TORCH_CHECK_VALUE(boundary_mode >= 0 && boundary_mode <= 2, op,
                      ": boundary_mode must be 0 (wrap), 1 (clamp) or 2 (zero)");
    filter = static_cast<int>(filter_mode);
    boundary = static_cast<int>(boundary_mode);
  }

  bool empty() const { return B * h * w * C == 0 || Ht * Wt == 0; }

  template <typename S>
  TexturePtrs<S> ptrs() const {
    return {ptr<const S>(tex), ptr<const S>(uv), B, h, w, Bt, Ht, Wt, C};
  }
};

}  // namespace

Tensor texture_fwd(const Tensor& tex, const Tensor& uv, int64_t filter_mode, int64_t boundary_mode) {
  const Args a("texture_fwd", tex, uv, filter_mode, boundary_mode);
  if (a.empty()) return at::zeros({a.B, a.h, a.w, a.C}, a.tex.options());
  Tensor out = at::empty({a.B, a.h, a.w, a.C}, a.tex.options());
  dispatch_float(a.tex.scalar_type(), a.in.op, [&](auto z) {
    using S = decltype(z);
    const TexturePtrs<S> p = a.ptrs<S>();
    run_on_device(a.tex, a.in.op, PE_CUDA(cuda::texture_fwd<S>(p, a.filter, a.boundary, ptr<S>(out), stream)),
                  [&] { cpu::texture_fwd<S>(p, a.filter, a.boundary, ptr<S>(out)); });
  });
  return out;
}

std::tuple<Tensor, Tensor> texture_bwd(const Tensor& grad_out, const Tensor& tex, const Tensor& uv,
                                       int64_t filter_mode, int64_t boundary_mode, bool need_tex, bool need_uv) {
  const Args a("texture_bwd", tex, uv, filter_mode, boundary_mode);
  const auto dt = a.tex.scalar_type();
  const Tensor g = a.in(grad_out.to(dt), "grad_out", dt, {a.B, a.h, a.w, a.C});
  Tensor gt = need_tex ? at::zeros_like(a.tex) : Tensor();
  Tensor gu = need_uv ? at::zeros_like(a.uv) : Tensor();
  if (a.empty() || (!need_tex && !need_uv)) return {gt, gu};
  dispatch_float(dt, a.in.op, [&](auto z) {
    using S = decltype(z);
    const TexturePtrs<S> p = a.ptrs<S>();
    run_on_device(a.tex, a.in.op,
                  PE_CUDA(cuda::texture_bwd<S>(p, a.filter, a.boundary, ptr<const S>(g), ptr<S>(gt), ptr<S>(gu),
                                               stream)),
                  [&] { cpu::texture_bwd<S>(p, a.filter, a.boundary, ptr<const S>(g), ptr<S>(gt), ptr<S>(gu)); });
  });
  return {gt, gu};
}

}  // namespace host
}  // namespace pe
