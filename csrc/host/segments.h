// Sorted segments for the deterministic CUDA scatters of the point ops (grouping and
// nearest_neighbor_interpolate backward): with torch on the current stream, per batch, the stable
// order of the keys and, by a binary search of every target in the sorted keys, where each
// target's segment starts. A thread per target then adds its segment in order.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace pe {
namespace host {

// keys [B, L] int32 in [0, n) -> (order [B, L] int64, start [B, n + 1] int64).
inline std::pair<at::Tensor, at::Tensor> key_segments(const at::Tensor& keys, int64_t n) {
  const auto [sorted, order] = keys.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false);
  const at::Tensor targets = at::arange(n + 1, keys.options()).expand({keys.size(0), n + 1}).contiguous();
  return {order.contiguous(), at::searchsorted(sorted.contiguous(), targets).contiguous()};
}

}  // namespace host
}  // namespace pe
