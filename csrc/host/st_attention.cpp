// st_attention host functions (see host/common.h). The Python layer gives the user-facing errors;
// here only what the kernel relies on is checked: sizes, dtypes, and kv_frames' values (it indexes
// frames with them; a small CPU tensor, so the check costs nothing). q, k, v, g_out and out are
// read through their strides, never copied.
//
// There is no CUDA kernel for st_attention yet: CUDA tensors get an error naming the backends that
// run them (when one is added, the call below becomes run_on_device). The check is on is_cuda()
// rather than run_on_device's on_device(), so that the emulated CUDA build (tests/cuda_emu) still
// runs this CPU kernel for CPU tensors.
#include "host/st_attention.h"

#include "host/common.h"
#include "pyengine/st_attention.h"

namespace pe {
namespace host {
namespace {

// The checked sizes of one call and its optional tensors (contiguous, or undefined when empty).
struct Call {
  const char* op;
  StDims d{};
  at::ScalarType acc;
  Tensor kv, bias, pos;

  Call(const char* op_, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& kv_frames,
       const Tensor& bias_, const Tensor& pos_, int64_t heads, bool temporal)
      : op(op_) {
    TORCH_CHECK(!q.is_cuda(), op, ": st_attention has no CUDA kernel; use backend='triton' or 'reference'");
    const auto dt = q.scalar_type();
    TORCH_CHECK_TYPE(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat ||
                         dt == at::kDouble,
                     op, ": q must be float16, bfloat16, float32 or float64, got ", c10::getDtypeNames(dt).first);
    TORCH_CHECK_VALUE(q.dim() == 5, op, ": q must be [B, T, H, W, C], got ", shape_str(q.sizes()));
    for (const auto& [t, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}}) {
      TORCH_CHECK_VALUE(t->sizes() == q.sizes(), op, ": ", name, " must be ", shape_str(q.sizes()), " like q, got ",
                        shape_str(t->sizes()));
      TORCH_CHECK_TYPE(t->scalar_type() == dt, op, ": ", name, " must have q's dtype");
      TORCH_CHECK_VALUE(t->device() == q.device(), op, ": ", name, " is on ", t->device().str(), ", not ",
                        q.device().str());
    }
    const int64_t C = q.size(4);
    TORCH_CHECK_VALUE(heads >= 1 && C % heads == 0 && C / heads <= kStMaxHeadDim, op,
                      ": heads must divide C with C / heads <= ", std::to_string(kStMaxHeadDim), ", got heads ",
                      std::to_string(heads), " and C ", std::to_string(C));
    acc = dt == at::kDouble ? at::kDouble : at::kFloat;
    d.B = q.size(0);
    d.T = q.size(1);
    d.H = q.size(2);
    d.W = q.size(3);
    d.heads = static_cast<int>(heads);
    d.D = static_cast<int>(C / heads);
    d.temporal = temporal;
    d.n_src = 1;
    const Inputs in{op, q.device()};
    if (!temporal) {
      kv = in(kv_frames, "kv_frames", at::kInt, {d.T, -1});
      TORCH_CHECK_VALUE(kv.size(1) >= 1 && kv.size(1) <= INT32_MAX, op, ": kv_frames needs at least one column");
      d.n_src = static_cast<int>(kv.size(1));
      if (kv.numel()) {
        const auto [lo, hi] = at::aminmax(kv);
        TORCH_CHECK_VALUE(lo.item<int32_t>() >= 0 && hi.item<int32_t>() < d.T, op,
                          ": kv_frames must hold frame indices in [0, T)");
      }
    }
    const int64_t L = st_len(d), Lk = st_key_len(d);
    if (bias_.numel()) {
      TORCH_CHECK_VALUE(bias_.dim() == 3 && (bias_.size(0) == 1 || bias_.size(0) == heads), op,
                        ": bias must be [1 or heads, Lq, Lk], got ", shape_str(bias_.sizes()));
      bias = in(bias_, "bias", acc, {-1, L, Lk});
      d.bias_heads = static_cast<int>(bias.size(0));
    }
    if (pos_.numel()) {
      TORCH_CHECK_VALUE(pos_.dim() == 2 && pos_.size(0) >= L, op, ": pos must be [Lq, D] = ",
                        shape_str({L, d.D}), ", got ", shape_str(pos_.sizes()));
      pos = in(pos_, "pos", acc, {-1, d.D});
      d.has_pos = true;
    }
  }
};

StStrides strides_of(const Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
}

// The typed data pointer of a tensor read through its strides (null when it has no elements).
template <typename S>
const S* strided_ptr(const Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.element_size() == sizeof(S));
  return t.numel() ? static_cast<const S*>(t.data_ptr()) : nullptr;
}

// The typed data pointer of a gradient written through its strides (null when undefined or empty).
template <typename S>
S* grad_ptr(const Tensor& t) {
  if (!t.defined() || t.numel() == 0) return nullptr;
  TORCH_INTERNAL_ASSERT(t.element_size() == sizeof(S));
  return static_cast<S*>(t.data_ptr());
}

}  // namespace

std::tuple<Tensor, Tensor> st_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& kv_frames, const Tensor& bias, const Tensor& pos,
                                            int64_t heads, bool temporal, double scale) {
  const Call c("st_attention_fwd", q, k, v, kv_frames, bias, pos, heads, temporal);
  const StDims& d = c.d;
  Tensor out = at::empty({d.B, d.T, d.H, d.W, q.size(4)}, q.options());
  Tensor lse = at::empty({d.B, d.T, d.H, d.W, heads}, q.options().dtype(c.acc));
  dispatch_storage(q.scalar_type(), c.op, [&](auto za, auto zs) {
    using A = decltype(za);
    using S = decltype(zs);
    const StFwdArgs<S, A> a{strided_ptr<S>(q), strided_ptr<S>(k), strided_ptr<S>(v), strides_of(q), strides_of(k),
                            strides_of(v), ptr<const int32_t>(c.kv), ptr<const A>(c.bias), ptr<const A>(c.pos),
                            static_cast<A>(scale), ptr<S>(out), ptr<A>(lse)};
    cpu::st_attention_fwd<S, A>(d, a);
  });
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> st_attention_bwd(
    const Tensor& g_out, const Tensor& g_lse, const Tensor& q, const Tensor& k, const Tensor& v,
    const Tensor& kv_frames, const Tensor& bias, const Tensor& pos, const Tensor& out, const Tensor& lse,
    int64_t heads, bool temporal, double scale, bool need_q, bool need_k, bool need_v, bool need_bias) {
  const Call c("st_attention_bwd", q, k, v, kv_frames, bias, pos, heads, temporal);
  const StDims& d = c.d;
  const Inputs in{c.op, q.device()};
  const c10::IntArrayRef shape = q.sizes();
  const std::vector<int64_t> lse_shape{d.B, d.T, d.H, d.W, heads};
  // the upstream gradients may come in another dtype; g_out and out are read through their strides
  const auto same = [&](const Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.sizes() == shape, c.op, ": ", name, " must be ", shape_str(shape), ", got ",
                      shape_str(t.sizes()));
    TORCH_CHECK_VALUE(t.device() == q.device(), c.op, ": ", name, " is on ", t.device().str());
    return t.scalar_type() == q.scalar_type() ? t : t.to(q.scalar_type());
  };
  const Tensor go = same(g_out, "g_out"), o = same(out, "out");
  const Tensor gl = in(g_lse.to(c.acc), "g_lse", c.acc, lse_shape), ls = in(lse.to(c.acc), "lse", c.acc, lse_shape);
  // like q, k, v (their strides when dense, as the op's fake backward allocates them)
  const auto grad = [&](bool need, const Tensor& like) { return need ? at::empty_like(like) : Tensor(); };
  Tensor dq = grad(need_q, q), dk = grad(need_k, k), dv = grad(need_v, v);
  const auto strides_or_none = [](const Tensor& t) { return t.defined() ? strides_of(t) : StStrides{}; };
  Tensor dbias = need_bias && c.bias.defined() ? at::zeros_like(c.bias) : Tensor();
  if (!dq.defined() && !dk.defined() && !dv.defined() && !dbias.defined()) return {dq, dk, dv, dbias};
  dispatch_storage(q.scalar_type(), c.op, [&](auto za, auto zs) {
    using A = decltype(za);
    using S = decltype(zs);
    const StBwdArgs<S, A> a{strided_ptr<S>(go), strides_of(go), ptr<const A>(gl), strided_ptr<S>(q),
                            strided_ptr<S>(k), strided_ptr<S>(v), strides_of(q), strides_of(k), strides_of(v),
                            ptr<const int32_t>(c.kv), ptr<const A>(c.bias), ptr<const A>(c.pos),
                            static_cast<A>(scale), strided_ptr<S>(o), strides_of(o), ptr<const A>(ls),
                            grad_ptr<S>(dq), grad_ptr<S>(dk), grad_ptr<S>(dv), strides_or_none(dq),
                            strides_or_none(dk), strides_or_none(dv), ptr<A>(dbias)};
    cpu::st_attention_bwd<S, A>(d, a);
  });
  return {dq, dk, dv, dbias};
}

}  // namespace host
}  // namespace pe
