// antialias host functions (see host/common.h). The kernels skip pairs whose ids, vertex indices
// or wing indices are out of range, so any values are memory-safe; the Python layer checks types,
// shapes and (unless validate=False) the values for the user.
#include "host/antialias.h"

#include "host/common.h"
#include "pyengine/antialias.h"

namespace pe {
namespace host {
namespace {

// The checked, contiguous inputs of one call and their sizes.
struct Args {
  Inputs in;
  Tensor color, rast, pos, tri, topology;
  int64_t B, H, W, C, Bp, V, T;

  Args(const char* op, const Tensor& color_in, const Tensor& rast_in, const Tensor& pos_in, const Tensor& tri_in,
       const Tensor& topology_in)
      : in{op, color_in.device()} {
    TORCH_CHECK_VALUE(color_in.dim() == 4, op, ": color must be [B, H, W, C], got ", shape_str(color_in.sizes()));
    const auto dt = color_in.scalar_type();
    color = in(color_in, "color", dt, {-1, -1, -1, -1});
    B = color.size(0), H = color.size(1), W = color.size(2), C = color.size(3);
    rast = in(rast_in, "rast", dt, {B, H, W, 4});
    pos = in(pos_in, "pos", dt, {-1, -1, 4});
    Bp = pos.size(0), V = pos.size(1);
    TORCH_CHECK_VALUE(Bp == B || Bp == 1, op, ": pos must be [1, V, 4] or [B, V, 4] with B = ", std::to_string(B),
                      ", got ", shape_str(pos.sizes()));
    tri = in(tri_in, "tri", at::kLong, {-1, 3});
    T = tri.size(0);
    topology = in(topology_in, "topology", at::kLong, {T, 3});
  }

  template <typename S>
  AntialiasPtrs<S> ptrs(double grad_eps) const {
    return {ptr<const S>(color), ptr<const S>(rast), ptr<const S>(pos), ptr<const int64_t>(tri),
            ptr<const int64_t>(topology), B, H, W, C, Bp, V, T, static_cast<S>(grad_eps)};
  }
};

}  // namespace

Tensor antialias_fwd(const Tensor& color, const Tensor& rast, const Tensor& pos, const Tensor& tri,
                     const Tensor& topology, double pos_grad_eps) {
  const Args a("antialias_fwd", color, rast, pos, tri, topology);
  if (a.color.numel() == 0 || a.T == 0 || a.V == 0) return a.color.clone();
  Tensor out = at::empty_like(a.color);
  dispatch_float(a.color.scalar_type(), a.in.op, [&](auto z) {
    using S = decltype(z);
    const AntialiasPtrs<S> p = a.ptrs<S>(pos_grad_eps);
    run_on_device(a.color, a.in.op, PE_CUDA(cuda::antialias_fwd<S>(p, ptr<S>(out), stream)),
                  [&] { cpu::antialias_fwd<S>(p, ptr<S>(out)); });
  });
  return out;
}

std::tuple<Tensor, Tensor> antialias_bwd(const Tensor& grad_out, const Tensor& color, const Tensor& rast,
                                         const Tensor& pos, const Tensor& tri, const Tensor& topology,
                                         double pos_grad_eps, bool need_color, bool need_pos) {
  const Args a("antialias_bwd", color, rast, pos, tri, topology);
  const auto dt = a.color.scalar_type();
  const Tensor g = a.in(grad_out.to(dt), "grad_out", dt, {a.B, a.H, a.W, a.C});
  Tensor gc = need_color ? at::empty_like(a.color) : Tensor();
  Tensor gp = need_pos ? at::zeros_like(a.pos) : Tensor();
  if (a.color.numel() == 0 || a.T == 0 || a.V == 0) {
    if (need_color) gc.copy_(g);
    return {gc, gp};
  }
  if (!need_color && !need_pos) return {gc, gp};
  dispatch_float(dt, a.in.op, [&](auto z) {
    using S = decltype(z);
    const AntialiasPtrs<S> p = a.ptrs<S>(pos_grad_eps);
    run_on_device(a.color, a.in.op,
                  PE_CUDA(cuda::antialias_bwd<S>(p, ptr<const S>(g), ptr<S>(gc), ptr<S>(gp), stream)),
                  [&] { cpu::antialias_bwd<S>(p, ptr<const S>(g), ptr<S>(gc), ptr<S>(gp)); });
  });
  return {gc, gp};
}

}  // namespace host
}  // namespace pe
