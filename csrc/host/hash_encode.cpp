// hash_encode host code: tensor checks, dtype handling, output allocation, CPU / CUDA dispatch.
#include "host/common.h"
#include "host/hash_encode.h"

#include "pyengine/hash_encode.h"


namespace pe {
namespace host {
namespace {

using torch::Tensor;

struct HashArgs {
  pe::HashLevels lv;
  int D, F, interp;
};

HashArgs hash_args(const Tensor& x, const Tensor& params, const std::vector<int64_t>& offsets,
                   const std::vector<double>& scales, const std::vector<int64_t>& resolutions,
                   int64_t hashed_mask, int64_t F, int64_t interp) {
  TORCH_CHECK_VALUE(x.dim() == 2, "hash_encode: positions must be [N, D], got ", x.sizes());
  const int64_t D = x.size(1);
  TORCH_CHECK_VALUE(D >= 2 && D <= 4, "hash_encode: positions must have 2 to 4 dims, got ", D);
  TORCH_CHECK_VALUE(F == 1 || F == 2 || F == 4 || F == 8,
                    "hash_encode: n_features_per_level must be 1, 2, 4 or 8, got ", F);
  const int64_t L = static_cast<int64_t>(scales.size());
  TORCH_CHECK_VALUE(L >= 1 && L <= pe::kHashMaxLevels, "hash_encode: 1 to ", pe::kHashMaxLevels,
                    " levels supported, got ", L);
  TORCH_CHECK_VALUE(static_cast<int64_t>(offsets.size()) == L + 1 &&
                        static_cast<int64_t>(resolutions.size()) == L,
                    "hash_encode: offsets must have L + 1 entries and resolutions L");
  TORCH_CHECK_VALUE(params.dim() == 1 && params.numel() == offsets.back() * F,
                    "hash_encode: params must be 1-D with ", offsets.back() * F, " values, got ",
                    params.sizes());
  TORCH_CHECK_VALUE(interp == pe::kHashLinear || interp == pe::kHashSmoothstep,
                    "hash_encode: unknown interpolation ", interp);
  TORCH_CHECK_VALUE(x.device() == params.device(), "hash_encode: positions on ", x.device(),
                    " but params on ", params.device());
  HashArgs a{};
  a.D = static_cast<int>(D);
  a.F = static_cast<int>(F);
  a.interp = static_cast<int>(interp);
  a.lv.n_levels = static_cast<int>(L);
  a.lv.hashed_mask = static_cast<uint32_t>(hashed_mask);
  for (int64_t l = 0; l <= L; ++l) {
    TORCH_CHECK_VALUE(offsets[l] >= 0 && (l == 0 || offsets[l] > offsets[l - 1]),
                      "hash_encode: offsets must be increasing");
    a.lv.offset[l] = static_cast<uint32_t>(offsets[l]);
  }
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK_VALUE(resolutions[l] >= 1, "hash_encode: resolutions must be >= 1");
    a.lv.res[l] = static_cast<uint32_t>(resolutions[l]);
    a.lv.scale[l] = static_cast<float>(scales[l]);
  }
  return a;
}

// Compute dtype: double when either input is double, else float.
torch::ScalarType compute_type(const Tensor& x, const Tensor& params) {
  return (x.scalar_type() == torch::kFloat64 || params.scalar_type() == torch::kFloat64)
             ? torch::kFloat64
             : torch::kFloat32;
}

void check_floating(const Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == torch::kFloat32 || s == torch::kFloat64 || s == torch::kFloat16 ||
                       s == torch::kBFloat16,
                   "hash_encode: ", name, " must be float16, bfloat16, float32 or float64, got ",
                   s);
}

#ifdef PE_WITH_CUDA
int table_type(torch::ScalarType s) {
  switch (s) {
    case torch::kFloat32: return pe::cuda::kTableF32;
    case torch::kFloat16: return pe::cuda::kTableF16;
    case torch::kBFloat16: return pe::cuda::kTableBF16;
    default: return pe::cuda::kTableF64;
  }
}
#endif

// Tensors as the kernels want them: x in the compute type, the table in the compute type on CPU
// and in its storage type (or double) on CUDA.
struct Prepared {
  Tensor x, table;
  torch::ScalarType T;
};
Prepared prepare(const Tensor& x, const Tensor& params) {
  check_floating(x, "positions");
  check_floating(params, "params");
  TORCH_CHECK_TYPE(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64,
                   "hash_encode: positions must be float32 or float64, got ", x.scalar_type());
  const auto T = compute_type(x, params);
  Tensor table = params;
  if (T == torch::kFloat64 || !on_device(x)) table = params.to(T);
  return {x.to(T).contiguous(), table.contiguous(), T};
}

}  // namespace

Tensor hash_encode_fwd(const Tensor& x_in, const Tensor& params, std::vector<int64_t> offsets,
                       std::vector<double> scales, std::vector<int64_t> resolutions,
                       int64_t hashed_mask, int64_t F, int64_t interp) {
  const HashArgs a = hash_args(x_in, params, offsets, scales, resolutions, hashed_mask, F, interp);
  const Prepared p = prepare(x_in, params);
  const int64_t N = p.x.size(0);
  Tensor out = torch::empty({N, a.lv.n_levels * F}, p.table.options());
  if (N > 0) {
    if (on_device(p.x)) {
#ifdef PE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(p.x.device());
      check_cuda(pe::cuda::hash_encode_fwd(N, a.D, a.F, a.lv, a.interp,
                                           table_type(p.table.scalar_type()), p.x.data_ptr(),
                                           p.table.data_ptr(), out.data_ptr(),
                                           c10::cuda::getCurrentCUDAStream().stream()),
                 "hash_encode", "forward");
#else
      TORCH_CHECK(false, "hash_encode: pyengine._C was built without CUDA");
#endif
    } else if (p.T == torch::kFloat64) {
      pe::cpu::hash_encode_fwd<double, double>(N, a.D, a.F, a.lv, a.interp,
                                               p.x.data_ptr<double>(), p.table.data_ptr<double>(),
                                               out.data_ptr<double>());
    } else {
      pe::cpu::hash_encode_fwd<float, float>(N, a.D, a.F, a.lv, a.interp, p.x.data_ptr<float>(),
                                             p.table.data_ptr<float>(), out.data_ptr<float>());
    }
  }
  return out.to(params.scalar_type());
}

// Returns (grad_params or None, grad_positions or None).
std::tuple<Tensor, Tensor> hash_encode_bwd(const Tensor& grad_out_in, const Tensor& x_in,
                                           const Tensor& params, std::vector<int64_t> offsets,
                                           std::vector<double> scales,
                                           std::vector<int64_t> resolutions, int64_t hashed_mask,
                                           int64_t F, int64_t interp, bool need_params,
                                           bool need_x) {
  const HashArgs a = hash_args(x_in, params, offsets, scales, resolutions, hashed_mask, F, interp);
  const Prepared p = prepare(x_in, params);
  const int64_t N = p.x.size(0);
  TORCH_CHECK_VALUE(grad_out_in.dim() == 2 && grad_out_in.size(0) == N &&
                        grad_out_in.size(1) == a.lv.n_levels * F,
                    "hash_encode_bwd: grad_out must be [", N, ", ", a.lv.n_levels * F, "], got ",
                    grad_out_in.sizes());
  const Tensor grad_out = grad_out_in.to(p.table.scalar_type()).contiguous();
  const auto opts = p.x.options();
  Tensor gp = need_params ? torch::zeros({params.numel()}, opts) : Tensor();
  Tensor gx = need_x ? torch::zeros({N, a.D}, opts) : Tensor();
  if (N > 0 && (need_params || need_x)) {
    if (on_device(p.x)) {
#ifdef PE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(p.x.device());
      check_cuda(pe::cuda::hash_encode_bwd(
                     N, a.D, a.F, a.lv, a.interp, table_type(p.table.scalar_type()),
                     p.x.data_ptr(), p.table.data_ptr(), grad_out.data_ptr(),
                     need_params ? gp.data_ptr() : nullptr, need_x ? gx.data_ptr() : nullptr,
                     c10::cuda::getCurrentCUDAStream().stream()),
                 "hash_encode", "backward");
#else
      TORCH_CHECK(false, "hash_encode: pyengine._C was built without CUDA");
#endif
    } else if (p.T == torch::kFloat64) {
      pe::cpu::hash_encode_bwd<double, double>(
          N, a.D, a.F, a.lv, a.interp, p.x.data_ptr<double>(), p.table.data_ptr<double>(),
          grad_out.data_ptr<double>(), need_params ? gp.data_ptr<double>() : nullptr,
          need_x ? gx.data_ptr<double>() : nullptr);
    } else {
      pe::cpu::hash_encode_bwd<float, float>(
          N, a.D, a.F, a.lv, a.interp, p.x.data_ptr<float>(), p.table.data_ptr<float>(),
          grad_out.data_ptr<float>(), need_params ? gp.data_ptr<float>() : nullptr,
          need_x ? gx.data_ptr<float>() : nullptr);
    }
  }
  return {need_params ? gp.to(params.scalar_type()) : Tensor(),
          need_x ? gx.to(x_in.scalar_type()) : Tensor()};
}

// Returns (d_grad_out or None, d_positions or None, d_params or None): the terms that flow
// through the positions-gradient of the backward (see hash_level_bwd_bwd).
std::tuple<Tensor, Tensor, Tensor> hash_encode_bwd_bwd(
    const Tensor& gg_x_in, const Tensor& grad_out_in, const Tensor& x_in, const Tensor& params,
    std::vector<int64_t> offsets, std::vector<double> scales, std::vector<int64_t> resolutions,
    int64_t hashed_mask, int64_t F, int64_t interp, bool need_grad_out, bool need_x,
    bool need_params) {
  const HashArgs a = hash_args(x_in, params, offsets, scales, resolutions, hashed_mask, F, interp);
  const Prepared p = prepare(x_in, params);
  const int64_t N = p.x.size(0);
  TORCH_CHECK_VALUE(grad_out_in.dim() == 2 && grad_out_in.size(0) == N &&
                        grad_out_in.size(1) == a.lv.n_levels * F,
                    "hash_encode_bwd_bwd: grad_out must be [", N, ", ", a.lv.n_levels * F, "]");
  TORCH_CHECK_VALUE(gg_x_in.dim() == 2 && gg_x_in.size(0) == N && gg_x_in.size(1) == a.D,
                    "hash_encode_bwd_bwd: the gradient of grad_positions must be [", N, ", ", a.D,
                    "]");
  const Tensor grad_out = grad_out_in.to(p.table.scalar_type()).contiguous();
  const Tensor gg_x = gg_x_in.to(p.T).contiguous();
  const auto opts = p.x.options();
  Tensor dgo = need_grad_out ? torch::zeros({N, a.lv.n_levels * F}, p.table.options()) : Tensor();
  Tensor gx = need_x ? torch::zeros({N, a.D}, opts) : Tensor();
  Tensor gp = need_params ? torch::zeros({params.numel()}, opts) : Tensor();
  if (N > 0 && (need_grad_out || need_x || need_params)) {
    if (on_device(p.x)) {
#ifdef PE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(p.x.device());
      check_cuda(pe::cuda::hash_encode_bwd_bwd(
                     N, a.D, a.F, a.lv, a.interp, table_type(p.table.scalar_type()),
                     p.x.data_ptr(), p.table.data_ptr(), grad_out.data_ptr(), gg_x.data_ptr(),
                     need_grad_out ? dgo.data_ptr() : nullptr, need_x ? gx.data_ptr() : nullptr,
                     need_params ? gp.data_ptr() : nullptr,
                     c10::cuda::getCurrentCUDAStream().stream()),
                 "hash_encode", "double backward");
#else
      TORCH_CHECK(false, "hash_encode: pyengine._C was built without CUDA");
#endif
    } else if (p.T == torch::kFloat64) {
      pe::cpu::hash_encode_bwd_bwd<double, double>(
          N, a.D, a.F, a.lv, a.interp, p.x.data_ptr<double>(), p.table.data_ptr<double>(),
          grad_out.data_ptr<double>(), gg_x.data_ptr<double>(),
          need_grad_out ? dgo.data_ptr<double>() : nullptr,
          need_x ? gx.data_ptr<double>() : nullptr, need_params ? gp.data_ptr<double>() : nullptr);
    } else {
      pe::cpu::hash_encode_bwd_bwd<float, float>(
          N, a.D, a.F, a.lv, a.interp, p.x.data_ptr<float>(), p.table.data_ptr<float>(),
          grad_out.data_ptr<float>(), gg_x.data_ptr<float>(),
          need_grad_out ? dgo.data_ptr<float>() : nullptr, need_x ? gx.data_ptr<float>() : nullptr,
          need_params ? gp.data_ptr<float>() : nullptr);
    }
  }
  return {need_grad_out ? dgo.to(grad_out_in.scalar_type()) : Tensor(),
          need_x ? gx.to(x_in.scalar_type()) : Tensor(),
          need_params ? gp.to(params.scalar_type()) : Tensor()};
}

}  // namespace host
}  // namespace pe
