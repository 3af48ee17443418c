// The only binding file: one m.def per host function. Host code (tensor checks, output
// allocation, CPU / CUDA dispatch) lives in csrc/host/<op>.cpp; kernels in csrc/cpu and csrc/cuda.
#include <torch/extension.h>

#include "host/antialias.h"
#include "host/ball_query.h"
#include "host/composite.h"
#include "host/furthest_point_sample.h"
#include "host/grouping.h"
#include "host/hash_encode.h"
#include "host/nearest_neighbor_interpolate.h"
#include "host/ray_march.h"
#include "host/rasterize.h"
#include "host/segment_scan.h"
#include "host/st_attention.h"
#include "host/texture.h"
#include "host/voxelize.h"
#include "pyengine/ray_march.h"

namespace {
bool built_with_cuda() {
#ifdef PE_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pyengine compiled kernels (CPU/OpenMP, and CUDA when built with it)";
  m.def("built_with_cuda", &built_with_cuda);

  // hash_encode
  m.def("hash_encode_fwd", &pe::host::hash_encode_fwd, "hash_encode forward -> [N, L*F]");
  m.def("hash_encode_bwd", &pe::host::hash_encode_bwd,
        "hash_encode backward -> (grad_params | None, grad_positions | None)");
  m.def("hash_encode_bwd_bwd", &pe::host::hash_encode_bwd_bwd,
        "hash_encode double backward -> (d_grad_out | None, d_positions | None, d_params | None)");

  // (new ops: add their m.def lines below, one block per op)

  // avg_voxelize, trilinear_devoxelize
  m.def("avg_voxelize_fwd", &pe::host::avg_voxelize_fwd,
        "average of the points in each voxel -> (grid [B, C, R, R, R], idx [B, N], counts [B, R^3])");
  m.def("avg_voxelize_bwd", &pe::host::avg_voxelize_bwd, "avg_voxelize backward -> grad_features | None");
  m.def("trilinear_devoxelize_fwd", &pe::host::trilinear_devoxelize_fwd,
        "trilinear lookup of the grid at each point -> [B, C, N]");
  m.def("trilinear_devoxelize_bwd", &pe::host::trilinear_devoxelize_bwd,
        "trilinear_devoxelize backward -> (grad_grid | None, grad_coords | None)");

  // furthest_point_sample, gather, grouping, ball_query, nearest_neighbor_interpolate (PVCNN's point ops)
  m.def("furthest_point_sample", &pe::host::furthest_point_sample,
        "furthest point sampling from point 0 -> indices [B, M] int32");
  m.def("gather_fwd", &pe::host::gather_fwd, "features at indices -> [B, C, M]");
  m.def("gather_bwd", &pe::host::gather_bwd, "gather backward -> grad_features | None");
  m.def("grouping_fwd", &pe::host::grouping_fwd, "features at neighbour indices -> [B, C, M, K]");
  m.def("grouping_bwd", &pe::host::grouping_bwd, "grouping backward -> grad_features | None");
  m.def("ball_query", &pe::host::ball_query, "the first K points within the radius -> indices [B, M, K] int32");
  m.def("nearest_neighbor_interpolate_fwd", &pe::host::nearest_neighbor_interpolate_fwd,
        "three-nearest-centre interpolation -> (out [B, C, N], indices [B, 3, N], weights [B, 3, N])");
  m.def("nearest_neighbor_interpolate_bwd", &pe::host::nearest_neighbor_interpolate_bwd,
        "nearest_neighbor_interpolate backward -> grad_centers_features | None");

  // segment_scan
  m.def("segment_scan_fwd", &pe::host::segment_scan_fwd, "scans of packed segments -> [S]");
  m.def("segment_scan_bwd", &pe::host::segment_scan_bwd, "segment_scan backward -> grad_x [S] | None");

  // composite
  m.def("composite_fwd", &pe::host::composite_fwd,
        "composite forward -> (weights [S], transmittance [S], alphas [S], accumulated [R, C], "
        "opacity [R], depth [R])");
  m.def("composite_bwd", &pe::host::composite_bwd,
        "composite backward -> (grad_densities_or_alphas | None, grad_values | None)");

  // antialias
  m.def("antialias_fwd", &pe::host::antialias_fwd, "analytic antialiasing of silhouette edges -> [B, H, W, C]");
  m.def("antialias_bwd", &pe::host::antialias_bwd, "antialias backward -> (grad_color | None, grad_pos | None)");

  // texture
  m.def("texture_fwd", &pe::host::texture_fwd, "2D texture sampling (nearest / bilinear) -> [B, h, w, C]");
  m.def("texture_bwd", &pe::host::texture_bwd, "texture backward -> (grad_tex | None, grad_uv | None)");

  // st_attention
  m.def("st_attention_fwd", &pe::host::st_attention_fwd,
        "spatial / temporal attention on [B, T, H, W, C] -> (out [B, T, H, W, C], lse [B, T, H, W, heads])");
  m.def("st_attention_bwd", &pe::host::st_attention_bwd,
        "st_attention backward -> (dq | None, dk | None, dv | None, dbias | None)");

  // rasterize, interpolate
  m.def("rasterize_fwd", &pe::host::rasterize_fwd, "triangle rasterization -> rast [B, H, W, 4] (u, v, z/w, id + 1)");
  m.def("rasterize_bwd", &pe::host::rasterize_bwd, "rasterize backward -> grad_pos | None");
  m.def("interpolate_fwd", &pe::host::interpolate_fwd, "vertex attributes at the rasterized pixels -> [B, H, W, C]");
  m.def("interpolate_bwd", &pe::host::interpolate_bwd,
        "interpolate backward -> (grad_attr | None, grad_rast | None)");

  // ray_aabb_intersect, ray_march
  m.def("ray_aabb_intersect", &pe::host::ray_aabb_intersect,
        "ray / box intersection -> (t_mins [N, M], t_maxs [N, M], hits [N, M])");
  namespace py = pybind11;
  m.def("ray_march", &pe::host::ray_march,
        "occupancy-grid marching -> (packed_info [R, 2], ray_indices [S], t_starts [S], t_ends [S], "
        "wanted [])",
        py::arg("rays_o"), py::arg("rays_d"), py::arg("t_min"), py::arg("t_max"),
        py::arg("binaries"), py::arg("roi_aabb"), py::arg("step_size"), py::arg("cone_angle"),
        py::arg("jitter"), py::arg("max_steps") = pe::kMarchMaxSteps, py::arg("capacity") = -1);
}
