// avg_voxelize and trilinear_devoxelize host functions (see host/common.h). The Python layer has
// cast the floating inputs to one dtype, the integer coordinates to int32 and checked their range
// (unless told not to); the kernels clamp every coordinate into [0, R - 1] whatever they get.
//
// The deterministic CUDA reductions sort here, with torch on the current stream: per batch, the
// stable order of the keys (voxel indices) and, by a binary search of every voxel in the sorted
// keys, where each voxel's segment starts.
#include "host/voxelize.h"

#include "host/common.h"
#include "pyengine/voxelize.h"

namespace pe {
namespace host {
namespace {

int check_resolution(const char* op, int64_t resolution) {
  TORCH_CHECK_VALUE(resolution >= 1 && resolution <= kMaxVoxelResolution, op, ": resolution must be in [1, ",
                    kMaxVoxelResolution, "], got ", resolution);
  return static_cast<int>(resolution);
}

// keys [B, M] int32 in [0, V) -> (order [B, M] int64, start [B, V + 1] int64): the stable
// order of each batch's keys and where voxel v's keys begin in it.
[[maybe_unused]] std::pair<Tensor, Tensor> sorted_segments(const Tensor& keys, int64_t V) {
  const auto [sorted, order] = keys.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false);
  const Tensor voxels = at::arange(V + 1, keys.options()).expand({keys.size(0), V + 1}).contiguous();
  return {order.contiguous(), at::searchsorted(sorted, voxels).contiguous()};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> avg_voxelize_fwd(const Tensor& features, const Tensor& coords,
                                                    int64_t resolution, bool deterministic) {
  const Inputs in{"avg_voxelize_fwd", features.device()};
  const int R = check_resolution(in.op, resolution);
  const Tensor f = in(features, "features", features.scalar_type(), {-1, -1, -1});
  const int64_t B = f.size(0), C = f.size(1), N = f.size(2), V = int64_t(R) * R * R;
  const Tensor c = in(coords, "coords", at::kInt, {B, 3, N});
  Tensor grid = at::zeros({B, C, R, R, R}, f.options());
  Tensor idx = at::empty({B, N}, c.options()), counts = at::zeros({B, V}, c.options());
  if (B * N == 0) return {grid, idx, counts};
  dispatch_float(f.scalar_type(), in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(f, in.op, PE_CUDA([&] {
                    const int err = cuda::avg_voxelize_index(B, N, R, ptr<const int32_t>(c), ptr<int32_t>(idx),
                                                             ptr<int32_t>(counts), stream);
                    if (err || C == 0) return err;
                    Tensor order, start;
                    if (deterministic) std::tie(order, start) = sorted_segments(idx, V);
                    return cuda::avg_voxelize_fwd<T>(B, C, N, R, ptr<const T>(f), ptr<const int32_t>(idx),
                                                     ptr<const int32_t>(counts), ptr<const int64_t>(order),
                                                     ptr<const int64_t>(start), ptr<T>(grid), stream);
                  }()),
                  [&] {
                    cpu::avg_voxelize_fwd<T>(B, C, N, R, ptr<const T>(f), ptr<const int32_t>(c), ptr<T>(grid),
                                             ptr<int32_t>(idx), ptr<int32_t>(counts));
                  });
  });
  return {grid, idx, counts};
}

Tensor avg_voxelize_bwd(const Tensor& g_grid, const Tensor& g_idx, const Tensor& g_counts,
                        const Tensor& features, const Tensor& coords, const Tensor& idx_in,
                        const Tensor& counts_in, int64_t resolution, bool deterministic,
                        bool need_features) {
  (void)g_idx, (void)g_counts, (void)coords, (void)deterministic;  // a gather: no reduction
  if (!need_features) return Tensor();
  const Inputs in{"avg_voxelize_bwd", features.device()};
  const int R = check_resolution(in.op, resolution);
  const auto dt = features.scalar_type();
  const int64_t B = features.size(0), C = features.size(1), N = features.size(2), V = int64_t(R) * R * R;
  const Tensor g = in(g_grid.to(dt), "g_grid", dt, {B, C, R, R, R});
  const Tensor idx = in(idx_in, "idx", at::kInt, {B, N});
  const Tensor counts = in(counts_in, "counts", at::kInt, {B, V});
  Tensor gf = at::empty({B, C, N}, features.options());
  if (B * C * N == 0) return gf;
  dispatch_float(dt, in.op, [&](auto z) {
    using T = decltype(z);
    run_on_device(g, in.op,
                  PE_CUDA(cuda::avg_voxelize_bwd<T>(B, C, N, R, ptr<const T>(g), ptr<const int32_t>(idx),
                                                    ptr<const int32_t>(counts), ptr<T>(gf), stream)),
                  [&] {
                    cpu::avg_voxelize_bwd<T>(B, C, N, R, ptr<const T>(g), ptr<const int32_t>(idx),
                                             ptr<const int32_t>(counts), ptr<T>(gf));
                  });
  });
  return gf;
}

namespace {

// Both directions' inputs, contiguous: grid [B, C, R, R, R] and coords [B, 3, N] in its dtype.
struct Lookup {
  Inputs in;
  Tensor grid, coords;
  int64_t B, C, N;
  int R;
  Lookup(const char* op, const Tensor& grid_in, const Tensor& coords_in)
      : in{op, grid_in.device()},
        grid(in(grid_in, "grid", grid_in.scalar_type(), {-1, -1, -1, -1, -1})),
        coords(in(coords_in, "coords", grid.scalar_type(), {grid.size(0), 3, -1})),
        B(grid.size(0)), C(grid.size(1)), N(coords.size(2)),
        R(check_resolution(op, grid.size(2))) {
    TORCH_CHECK_VALUE(grid.size(3) == R && grid.size(4) == R, op, ": grid must be [B, C, R, R, R], got ",
                      grid.sizes());
  }
};

}  // namespace

Tensor trilinear_devoxelize_fwd(const Tensor& grid, const Tensor& coords, bool deterministic) {
  (void)deterministic;  // a gather: no reduction
  const Lookup s("trilinear_devoxelize_fwd", grid, coords);
  Tensor out = at::empty({s.B, s.C, s.N}, s.grid.options());
  if (s.B * s.C * s.N == 0) return out;
  dispatch_float(s.grid.scalar_type(), s.in.op, [&](auto z) {
    using T = decltype(z);
    const T *g = ptr<const T>(s.grid), *c = ptr<const T>(s.coords);
    run_on_device(s.grid, s.in.op,
                  PE_CUDA(cuda::trilinear_devoxelize_fwd<T>(s.B, s.C, s.N, s.R, g, c, ptr<T>(out), stream)),
                  [&] { cpu::trilinear_devoxelize_fwd<T>(s.B, s.C, s.N, s.R, g, c, ptr<T>(out)); });
  });
  return out;
}

std::tuple<Tensor, Tensor> trilinear_devoxelize_bwd(const Tensor& g_out, const Tensor& grid,
                                                    const Tensor& coords, bool deterministic,
                                                    bool need_grid, bool need_coords) {
  const Lookup s("trilinear_devoxelize_bwd", grid, coords);
  const auto dt = s.grid.scalar_type();
  const Tensor go = s.in(g_out.to(dt), "g_out", dt, {s.B, s.C, s.N});
  Tensor gg = need_grid ? at::zeros_like(s.grid) : Tensor();
  Tensor gc = need_coords ? at::zeros_like(s.coords) : Tensor();
  if (s.B * s.C * s.N == 0 || (!need_grid && !need_coords)) return {gg, gc};
  dispatch_float(dt, s.in.op, [&](auto z) {
    using T = decltype(z);
    const T *g = ptr<const T>(s.grid), *c = ptr<const T>(s.coords), *o = ptr<const T>(go);
    run_on_device(s.grid, s.in.op, PE_CUDA([&] {
                    Tensor order, start;
                    if (need_grid && deterministic) {
                      Tensor keys = at::empty({s.B, s.N * 8}, s.grid.options().dtype(at::kInt));
                      if (const int err = cuda::trilinear_devoxelize_keys<T>(s.B, s.N, s.R, c, ptr<int32_t>(keys),
                                                                             stream))
                        return err;
                      std::tie(order, start) = sorted_segments(keys, int64_t(s.R) * s.R * s.R);
                    }
                    return cuda::trilinear_devoxelize_bwd<T>(s.B, s.C, s.N, s.R, o, g, c, ptr<const int64_t>(order),
                                                             ptr<const int64_t>(start), ptr<T>(gg), ptr<T>(gc),
                                                             stream);
                  }()),
                  [&] { cpu::trilinear_devoxelize_bwd<T>(s.B, s.C, s.N, s.R, o, g, c, ptr<T>(gg), ptr<T>(gc)); });
  });
  return {gg, gc};
}

}  // namespace host
}  // namespace pe
