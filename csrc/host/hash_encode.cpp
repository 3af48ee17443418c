// hash_encode host functions (see host/common.h). The compute type T is double when x or params
// is, else float. CUDA reads a float16 / bfloat16 table in place; the CPU path converts it to T,
// so the CPU launchers exist for T = P only (hence the `if constexpr`).
#include "host/hash_encode.h"

#include <type_traits>

#include "host/common.h"
#include "pyengine/hash_encode.h"

namespace pe {
namespace host {
namespace {

// One call's level constants and inputs, checked where the kernels index with them: x [N, D] in
// T, the table [offsets[L] * F] (in T on CPU), grad_out [N, L * F] in the table's dtype.
struct Hash {
  Inputs in;
  HashLevels lv{};
  Tensor x, table;
  int F, interp;
  Hash(const char* op, const Tensor& x_in, const Tensor& params,
       const std::vector<int64_t>& offsets, const std::vector<double>& scales,
       const std::vector<int64_t>& res, int64_t mask, int64_t F_, int64_t interp_)
      : in{op, x_in.device()}, F(static_cast<int>(F_)), interp(static_cast<int>(interp_)) {
    const size_t L = scales.size();
    TORCH_CHECK_VALUE(x_in.dim() == 2 && x_in.size(1) >= 2 && x_in.size(1) <= 4 &&
                          (F == 1 || F == 2 || F == 4 || F == 8),
                      op, ": x must be [N, 2..4] and F 1, 2, 4 or 8");
    TORCH_CHECK_VALUE(L >= 1 && L <= kHashMaxLevels && offsets.size() == L + 1 &&
                          res.size() == L && offsets[L] <= UINT32_MAX,
                      op, ": bad level layout");
    for (size_t l = 0; l <= L; ++l) {
      TORCH_CHECK_VALUE(l == 0 ? offsets[0] >= 0 : offsets[l] > offsets[l - 1], op,
                        ": offsets must increase");
      lv.offset[l] = static_cast<uint32_t>(offsets[l]);
      if (l == L) break;  // offset has L + 1 entries, res and scale L (at most kHashMaxLevels)
      lv.res[l] = static_cast<uint32_t>(res[l]);
      lv.scale[l] = static_cast<float>(scales[l]);
    }
    lv.n_levels = static_cast<int>(L);
    lv.hashed_mask = static_cast<uint32_t>(mask);
    const auto T = x_in.scalar_type() == at::kDouble || params.scalar_type() == at::kDouble
                       ? at::kDouble : at::kFloat;
    const Tensor tab = T == at::kDouble || !on_device(x_in) ? params.to(T) : params;
    x = in(x_in.to(T), "x", T, {-1, -1});
    table = in(tab, "params", tab.scalar_type(), {offsets[L] * F});
  }
  Tensor grad_out(const Tensor& g) const {
    const auto P = table.scalar_type();
    return in(g.to(P), "grad_out", P, {x.size(0), lv.n_levels * F});
  }
  template <typename T, typename P>
  HashArgs<T, P> args(T, P, const Tensor& grad_out, const Tensor& gg_x, const Tensor& out,
                      const Tensor& grad_x, const Tensor& grad_params) const {
    return {x.size(0), static_cast<int>(x.size(1)), F, interp, ptr<const T>(x),
            ptr<const P>(table), ptr<const P>(grad_out), ptr<const T>(gg_x), ptr<P>(out),
            ptr<T>(grad_x), ptr<T>(grad_params)};
  }
};

}  // namespace

Tensor hash_encode_fwd(const Tensor& x, const Tensor& params, std::vector<int64_t> offsets,
                       std::vector<double> scales, std::vector<int64_t> resolutions,
                       int64_t hashed_mask, int64_t F, int64_t interp) {
  const Hash h("hash_encode_fwd", x, params, offsets, scales, resolutions, hashed_mask, F, interp);
  Tensor out = at::empty({h.x.size(0), h.lv.n_levels * F}, h.table.options());
  dispatch_storage(h.table.scalar_type(), h.in.op, [&](auto t, auto p) {
    const auto a = h.args(t, p, {}, {}, out, {}, {});
    run_on_device(h.x, h.in.op, PE_CUDA(cuda::hash_encode_fwd(h.lv, a, stream)), [&] {
      if constexpr (std::is_same_v<decltype(t), decltype(p)>) cpu::hash_encode_fwd(h.lv, a);
    });
  });
  return out.to(params.scalar_type());
}

std::tuple<Tensor, Tensor> hash_encode_bwd(
    const Tensor& grad_out, const Tensor& x, const Tensor& params, std::vector<int64_t> offsets,
    std::vector<double> scales, std::vector<int64_t> resolutions, int64_t hashed_mask, int64_t F,
    int64_t interp, bool need_params, bool need_x) {
  const Hash h("hash_encode_bwd", x, params, offsets, scales, resolutions, hashed_mask, F, interp);
  const Tensor go = h.grad_out(grad_out);
  Tensor gp = need_params ? at::zeros({params.numel()}, h.x.options()) : Tensor();
  Tensor gx = need_x ? at::zeros_like(h.x) : Tensor();
  dispatch_storage(h.table.scalar_type(), h.in.op, [&](auto t, auto p) {
    const auto a = h.args(t, p, go, {}, {}, gx, gp);
    run_on_device(h.x, h.in.op, PE_CUDA(cuda::hash_encode_bwd(h.lv, a, stream)), [&] {
      if constexpr (std::is_same_v<decltype(t), decltype(p)>) cpu::hash_encode_bwd(h.lv, a);
    });
  });
  return {need_params ? gp.to(params.scalar_type()) : gp, need_x ? gx.to(x.scalar_type()) : gx};
}

// The terms that flow through the positions-gradient of the backward (see hash_level_bwd_bwd).
std::tuple<Tensor, Tensor, Tensor> hash_encode_bwd_bwd(
    const Tensor& gg_x, const Tensor& grad_out, const Tensor& x, const Tensor& params,
    std::vector<int64_t> offsets, std::vector<double> scales, std::vector<int64_t> resolutions,
    int64_t hashed_mask, int64_t F, int64_t interp, bool need_grad_out, bool need_x,
    bool need_params) {
  const Hash h("hash_encode_bwd_bwd", x, params, offsets, scales, resolutions, hashed_mask, F,
               interp);
  const Tensor go = h.grad_out(grad_out);
  const Tensor gg = h.in(gg_x.to(h.x.scalar_type()), "gg_x", h.x.scalar_type(), h.x.sizes());
  Tensor gp = need_params ? at::zeros({params.numel()}, h.x.options()) : Tensor();
  Tensor dgo = need_grad_out ? at::zeros_like(go) : Tensor();
  Tensor gx = need_x ? at::zeros_like(h.x) : Tensor();
  dispatch_storage(h.table.scalar_type(), h.in.op, [&](auto t, auto p) {
    const auto a = h.args(t, p, go, gg, dgo, gx, gp);
    run_on_device(h.x, h.in.op, PE_CUDA(cuda::hash_encode_bwd_bwd(h.lv, a, stream)), [&] {
      if constexpr (std::is_same_v<decltype(t), decltype(p)>) cpu::hash_encode_bwd_bwd(h.lv, a);
    });
  });
  return {need_grad_out ? dgo.to(grad_out.scalar_type()) : dgo,
          need_x ? gx.to(x.scalar_type()) : gx, need_params ? gp.to(params.scalar_type()) : gp};
}

}  // namespace host
}  // namespace pe
