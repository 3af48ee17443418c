// st_attention host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pe {
namespace host {
using at::Tensor;

// q, k, v [B, T, H, W, C] (any strides; one dtype: float16, bfloat16, float32 or float64),
// kv_frames int32 [T, n_src] (spatial mode; ignored in temporal mode), bias [Hb, Lq, Lk] and pos
// [>= Lq, D] in the compute dtype (float32, float64 for float64 inputs) or empty.
// -> (out [B, T, H, W, C] contiguous in q's dtype, lse [B, T, H, W, heads] in the compute dtype)
std::tuple<Tensor, Tensor> st_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& kv_frames, const Tensor& bias, const Tensor& pos,
                                            int64_t heads, bool temporal, double scale);

// Upstream gradients of (out, lse), the forward's inputs and outputs, and which gradients are needed.
// -> (dq, dk, dv like q, k, v (torch.empty_like) in q's dtype | undefined, dbias like bias | undefined)
std::tuple<Tensor, Tensor, Tensor, Tensor> st_attention_bwd(
    const Tensor& g_out, const Tensor& g_lse, const Tensor& q, const Tensor& k, const Tensor& v,
    const Tensor& kv_frames, const Tensor& bias, const Tensor& pos, const Tensor& out, const Tensor& lse,
    int64_t heads, bool temporal, double scale, bool need_q, bool need_k, bool need_v, bool need_bias);

}  // namespace host
}  // namespace pe
