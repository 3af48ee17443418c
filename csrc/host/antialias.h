// antialias host functions, bound to Python in csrc/ext.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pe {
namespace host {
using at::Tensor;

// color [B, H, W, C], rast [B, H, W, 4], pos [Bp, V, 4] (Bp = 1 or B), all float32 or all float64;
// tri, topology [T, 3] int64; pos_grad_eps, the position gradient's regulariser (only the backward
// reads it) -> the antialiased image [B, H, W, C].
Tensor antialias_fwd(const Tensor& color, const Tensor& rast, const Tensor& pos, const Tensor& tri,
                     const Tensor& topology, double pos_grad_eps);
// grad of the output [B, H, W, C] and the forward's inputs -> (grad_color | undefined,
// grad_pos | undefined) as asked by need_color / need_pos.
std::tuple<Tensor, Tensor> antialias_bwd(const Tensor& grad_out, const Tensor& color, const Tensor& rast,
                                         const Tensor& pos, const Tensor& tri, const Tensor& topology,
                                         double pos_grad_eps, bool need_color, bool need_pos);

}  // namespace host
}  // namespace pe
