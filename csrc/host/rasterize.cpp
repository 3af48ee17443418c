// rasterize and interpolate host functions (see host/common.h). The Python layer has checked the
// user's inputs (and, unless told not to, tri's indices and rast's ids); here only what the
// kernels index with is checked, without a device sync. The kernels treat a triangle with an
// index outside [0, V) as covering nothing and a rast id outside [1, T] as an empty pixel.
#include "host/rasterize.h"

#include "host/common.h"
#include "pyengine/rasterize.h"

namespace pe {
namespace host {
namespace {

constexpr int64_t kMaxResolution = 1 << 15;  // pixel centres (2 i + 1) / n - 1 stay exact in float32

int32_t check_size(const char* op, const char* name, int64_t n) {
  TORCH_CHECK_VALUE(n >= 0 && n <= kMaxResolution, op, ": ", name, " must be in [0, ",
                    std::to_string(kMaxResolution), "], got ", std::to_string(n));
  return static_cast<int32_t>(n);
}

// pos [B, V, 4] and tri [T, 3] int64, contiguous, with B * T below 2^31 (the CUDA work list).
struct Mesh {
  Inputs in;
  Tensor pos, tri;
  int64_t B, V, T;
  Mesh(const char* op, const Tensor& pos_, const Tensor& tri_)
      : in{op, pos_.device()},
        pos(in(pos_, "pos", pos_.scalar_type(), {-1, -1, 4})),
        tri(in(tri_, "tri", at::kLong, {-1, 3})),
        B(pos.size(0)), V(pos.size(1)), T(tri.size(0)) {
    TORCH_CHECK_VALUE(B * T < (int64_t(1) << 31), op, ": at most 2^31 - 1 (image, triangle) pairs, got ",
                      std::to_string(B * T));
  }
};

}  // namespace

Tensor rasterize_fwd(const Tensor& pos, const Tensor& tri, int64_t height, int64_t width) {
  const Mesh m("rasterize_fwd", pos, tri);
  const int32_t H = check_size(m.in.op, "height", height), W = check_size(m.in.op, "width", width);
  Tensor rast = at::empty({m.B, H, W, 4}, m.pos.options());
  dispatch_float(m.pos.scalar_type(), m.in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(m.pos, m.in.op, PE_CUDA([&] {
                    const auto i64 = m.pos.options().dtype(at::kLong);
                    Tensor keys = at::full({m.B * H * W}, -1, i64);  // kRastEmpty: all bits set
                    Tensor large = at::empty({m.B * m.T}, i64);
                    Tensor n_large = at::zeros({1}, m.pos.options().dtype(at::kInt));
                    return cuda::rasterize_fwd<T>(m.B, m.V, m.T, H, W, ptr<const T>(m.pos),
                                                  ptr<const int64_t>(m.tri), ptr<T>(rast),
                                                  reinterpret_cast<uint64_t*>(ptr<int64_t>(keys)),
                                                  ptr<int64_t>(large), ptr<int32_t>(n_large), stream);
                  }()),
                  [&] {
                    cpu::rasterize_fwd<T>(m.B, m.V, m.T, H, W, ptr<const T>(m.pos), ptr<const int64_t>(m.tri),
                                          ptr<T>(rast));
                  });
  });
  return rast;
}

Tensor rasterize_bwd(const Tensor& g_rast, const Tensor& pos, const Tensor& tri, const Tensor& rast_, int64_t height,
                     int64_t width, bool need_pos) {
  if (!need_pos) return Tensor();
  const Mesh m("rasterize_bwd", pos, tri);
  const int32_t H = check_size(m.in.op, "height", height), W = check_size(m.in.op, "width", width);
  const auto dt = m.pos.scalar_type();
  const Tensor rast = m.in(rast_.to(dt), "rast", dt, {m.B, H, W, 4});
  const Tensor g = m.in(g_rast.to(dt), "g_rast", dt, {m.B, H, W, 4});
  Tensor grad_pos = at::zeros_like(m.pos);
  dispatch_float(dt, m.in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(m.pos, m.in.op,
                  PE_CUDA(cuda::rasterize_bwd<T>(m.B, m.V, m.T, H, W, ptr<const T>(g), ptr<const T>(m.pos),
                                                 ptr<const int64_t>(m.tri), ptr<const T>(rast), ptr<T>(grad_pos),
                                                 stream)),
                  [&] {
                    cpu::rasterize_bwd<T>(m.B, m.V, m.T, H, W, ptr<const T>(g), ptr<const T>(m.pos),
                                          ptr<const int64_t>(m.tri), ptr<const T>(rast), ptr<T>(grad_pos));
                  });
  });
  return grad_pos;
}

namespace {

// attr [Ba, V, C], rast [B, H, W, 4] in attr's dtype, tri [T, 3] int64; Ba is 1 or B.
struct Interp {
  Inputs in;
  Tensor attr, rast, tri;
  int64_t Ba, V, C, B, H, W, T;
  Interp(const char* op, const Tensor& attr_, const Tensor& rast_, const Tensor& tri_)
      : in{op, attr_.device()},
        attr(in(attr_, "attr", attr_.scalar_type(), {-1, -1, -1})),
        rast(in(rast_, "rast", attr.scalar_type(), {-1, -1, -1, 4})),
        tri(in(tri_, "tri", at::kLong, {-1, 3})),
        Ba(attr.size(0)), V(attr.size(1)), C(attr.size(2)), B(rast.size(0)), H(rast.size(1)), W(rast.size(2)),
        T(tri.size(0)) {
    TORCH_CHECK_VALUE(Ba == 1 || Ba == B, op, ": attr has ", std::to_string(Ba), " batches, rast ",
                      std::to_string(B), " (attr's must be 1 or rast's)");
  }
};

}  // namespace

Tensor interpolate_fwd(const Tensor& attr, const Tensor& rast, const Tensor& tri) {
  const Interp s("interpolate_fwd", attr, rast, tri);
  Tensor out = at::empty({s.B, s.H, s.W, s.C}, s.attr.options());
  dispatch_float(s.attr.scalar_type(), s.in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(s.attr, s.in.op,
                  PE_CUDA(cuda::interpolate_fwd<T>(s.B, s.Ba, s.V, s.C, s.T, s.H * s.W, ptr<const T>(s.attr),
                                                   ptr<const T>(s.rast), ptr<const int64_t>(s.tri), ptr<T>(out),
                                                   stream)),
                  [&] {
                    cpu::interpolate_fwd<T>(s.B, s.Ba, s.V, s.C, s.T, s.H * s.W, ptr<const T>(s.attr),
                                            ptr<const T>(s.rast), ptr<const int64_t>(s.tri), ptr<T>(out));
                  });
  });
  return out;
}

std::tuple<Tensor, Tensor> interpolate_bwd(const Tensor& g_out, const Tensor& attr, const Tensor& rast,
                                           const Tensor& tri, bool need_attr, bool need_rast) {
  if (!need_attr && !need_rast) return {Tensor(), Tensor()};
  const Interp s("interpolate_bwd", attr, rast, tri);
  const auto dt = s.attr.scalar_type();
  const Tensor g = s.in(g_out.to(dt), "g_out", dt, {s.B, s.H, s.W, s.C});
  Tensor ga = need_attr ? at::zeros_like(s.attr) : Tensor();
  Tensor gr = need_rast ? at::empty_like(s.rast) : Tensor();
  dispatch_float(dt, s.in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(s.attr, s.in.op,
                  PE_CUDA(cuda::interpolate_bwd<T>(s.B, s.Ba, s.V, s.C, s.T, s.H * s.W, ptr<const T>(g),
                                                   ptr<const T>(s.attr), ptr<const T>(s.rast),
                                                   ptr<const int64_t>(s.tri), ptr<T>(ga), ptr<T>(gr), stream)),
                  [&] {
                    cpu::interpolate_bwd<T>(s.B, s.Ba, s.V, s.C, s.T, s.H * s.W, ptr<const T>(g),
                                            ptr<const T>(s.attr), ptr<const T>(s.rast), ptr<const int64_t>(s.tri),
                                            ptr<T>(ga), ptr<T>(gr));
                  });
  });
  return {ga, gr};
}

}  // namespace host
}  // namespace pe
