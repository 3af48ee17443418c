// Occupancy-grid ray marching and ray / box intersection: the per-ray maths shared by the CPU and
// CUDA kernels. pyengine/reference/ray_march.py and ray_aabb_intersect.py are the specification;
// their docstrings define every operation.
//
// Bit-identical results across backends. The reference is float32 PyTorch, one rounding per
// operation. The kernels perform the same operations in the same order, and every product that
// feeds a sum goes through rn_mul / rn_add: on the device these are __fmul_rn / __fadd_rn, which
// nvcc never contracts into an FMA (it contracts a plain `a * b + c` by default, -fmad=true;
// csrc/nvcc_flags.txt has no fast-math flag). The spot where that matters is the sample position
// x = o + d * t_mid: a fused multiply-add moves x by up to half an ulp, enough to move a midpoint
// that sits on a cell face into the neighbouring cell (or across a level boundary) on the GPU
// only. Division and the reciprocal use __fdiv_rn / __frcp_rn, which stay IEEE-rounded whatever
// the flags (under --use_fast_math a plain `/` would become an approximate division). The host
// side has no intrinsics: csrc/cpu/ray_march.cpp turns contraction off for its translation unit
// instead (x86-64 without -mfma has no FMA to contract into, but aarch64 and -march=native builds
// do). Denormals are kept on the device as on the CPU (--ftz=false in csrc/nvcc_flags.txt).
//
// Memory layout: rays_o / rays_d [R, 3] row-major; binaries [L, X, Y, Z] bool, C order; aabbs
// [M, 6] as (xmin, ymin, zmin, xmax, ymax, zmax); outputs [N, M] row-major.
#pragma once

#include <cmath>
#include <cstdint>

#include "pyengine/common.h"

namespace pe {

// ---------------------------------------------------------------------------------------------
// Rounding helpers (rn_mul, rn_add, rn_div, rn_rcp: pyengine/common.h).

PE_HD float rm_floor(float a) {
#if defined(__CUDA_ARCH__)
  return floorf(a);
#else
  return std::floor(a);
#endif
}
PE_HD float rm_abs(float a) { return a < 0.0f ? -a : a; }
// False for inf and NaN; a comparison, so that no fast-math flag can assume it away.
PE_HD bool rm_finite(float a) { return rm_abs(a) <= 3.402823466e+38f; }
template <typename T>
PE_HD bool rm_isnan(T a) { return a != a; }

// ---------------------------------------------------------------------------------------------
// ray_aabb_intersect: nerfacc's slab test for one (ray, box) pair.

// Returns whether the pair hits; t_enter / t_exit are the unclamped parameters of the entry and
// exit points (valid only on a hit). An axis with d == 0 keeps the whole line when the origin
// lies within its slab (boundary included), and misses otherwise; a NaN entry or exit misses.
template <typename T>
PE_HD bool ray_aabb_hit(const T* o, const T* d, const T* box, T& t_enter, T& t_exit) {
  t_enter = -static_cast<T>(INFINITY);
  t_exit = static_cast<T>(INFINITY);
  bool ok = true;
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    const T lo = box[a], hi = box[a + 3];
    if (d[a] == T(0)) {
      ok = ok && lo <= o[a] && o[a] <= hi;
      continue;
    }
    const T inv = rn_rcp(d[a]);
    const T t_lo = rn_mul(lo - o[a], inv);
    const T t_hi = rn_mul(hi - o[a], inv);
    const T entry = inv >= T(0) ? t_lo : t_hi;
    const T exit = inv >= T(0) ? t_hi : t_lo;
    ok = ok && !rm_isnan(entry) && !rm_isnan(exit);
    if (entry > t_enter) t_enter = entry;
    if (exit < t_exit) t_exit = exit;
  }
  return ok && t_enter <= t_exit && t_exit > T(0);
}

// clamp(t, lo, hi) as torch.clamp: min(max(t, lo), hi), hi wins when lo > hi.
template <typename T>
PE_HD T rm_clamp(T t, T lo, T hi) {
  t = t < lo ? lo : t;
  return t > hi ? hi : t;
}

// ---------------------------------------------------------------------------------------------
// ray_march: cascaded occupancy lookup and the per-ray loop.

constexpr float kMarchDtMax = 1e10f;
// Default of max_steps, the cap on the steps marched per ray (occupied or not). 2^20 steps of the
// smallest sensible size, 1e-6 of the scene, cross it once; it bounds the work of a degenerate
// ray (t_max = 1e30 with a tiny step marches until the step vanishes in float32, ~10^7 steps).
constexpr int64_t kMarchMaxSteps = int64_t(1) << 20;

// Everything the per-ray loop needs, passed by value to the CUDA kernels (~48 bytes).
struct MarchGrid {
  const float* roi_aabb;  // [6] (lo, hi) of level 0, read where the kernels run (no host copy)
  const bool* binaries;   // [L, X, Y, Z]
  int32_t res[3];         // X, Y, Z, shared by all levels
  int32_t levels;         // L; level l covers the roi box scaled by 2^l about its centre
  float step_size;        // minimum step, > 0
  float cone_angle;       // step growth with t, >= 0
  int64_t max_steps;      // steps marched per ray at most, occupied or not, >= 1
};

// The per-ray inputs: rays_o, rays_d [R, 3], t_min, t_max [R], jitter [R] or null.
struct MarchRays {
  const float *rays_o, *rays_d, *t_min, *t_max, *jitter;
};

// The roi box as centre and half size, with the reference's float32 operations in order.
struct MarchBox {
  float center[3], half[3];
};
PE_HD MarchBox march_box(const float* roi) {
  MarchBox b;
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    b.center[a] = rn_mul(rn_add(roi[a], roi[a + 3]), 0.5f);
    b.half[a] = rn_mul(roi[a + 3] - roi[a], 0.5f);
  }
  return b;
}

PE_HD float march_dt(const MarchGrid& g, float t) {
  return rm_clamp(rn_mul(t, g.cone_angle), g.step_size, kMarchDtMax);
}

// Occupancy at x = o + d * t. Level: the first l with |u_a| < 2^l on all axes (nerfacc's
// floor(log2(max|u|)) + 1, done with exact power-of-two comparisons instead of a log2).
PE_HD bool march_occupied(const MarchGrid& g, const MarchBox& box, const float* o, const float* d,
                          float t) {
  float u[3];
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    const float x = rn_add(o[a], rn_mul(d[a], t));  // see the header comment: no FMA here
    u[a] = rn_div(x - box.center[a], box.half[a]);
  }
  const float au0 = rm_abs(u[0]), au1 = rm_abs(u[1]), au2 = rm_abs(u[2]);
  float bound = 1.0f, inv_scale = 1.0f;  // 2^l and 2^-l, exact
  int level = 0;
  for (; level < g.levels; ++level) {
    if (au0 < bound && au1 < bound && au2 < bound) break;
    bound *= 2.0f;
    inv_scale *= 0.5f;
  }
  if (level == g.levels) return false;  // outside the coarsest box, or NaN
  // |u * 2^-level| < 1 here, so every coordinate below is finite and in [0, res].
  int64_t idx = level;
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    const float w = rn_add(rn_mul(rn_mul(u[a], inv_scale), 0.5f), 0.5f);
    int64_t i = static_cast<int64_t>(rm_floor(rn_mul(w, static_cast<float>(g.res[a]))));
    i = i < 0 ? 0 : (i >= g.res[a] ? g.res[a] - 1 : i);
    idx = idx * g.res[a] + i;
  }
  return g.binaries[idx];
}

// The loop over ray r's steps, shared by the count pass and the fill pass: at most g.max_steps
// steps; emit(t_start, t_end) is called for every occupied one in marching order and returns
// false to end the ray there.
template <typename Emit>
PE_HD void march_ray(const MarchGrid& g, const MarchBox& box, const MarchRays& rays, int64_t r,
                     Emit& emit) {
  const float *o = rays.rays_o + r * 3, *d = rays.rays_d + r * 3;
  const float t_min = rays.t_min[r], t_max = rays.t_max[r];
  if (!(rm_finite(t_min) && rm_finite(t_max) && t_min < t_max)) return;
  float t = rn_add(t_min, rn_mul(rays.jitter ? rays.jitter[r] : 0.0f, march_dt(g, t_min)));
  for (int64_t k = 0; k < g.max_steps && t < t_max; ++k) {
    const float t_next = rn_add(t, march_dt(g, t));
    const float t_end = t_next < t_max ? t_next : t_max;
    const float t_mid = rn_mul(rn_add(t, t_end), 0.5f);
    if (march_occupied(g, box, o, d, t_mid) && !emit(t, t_end)) return;
    if (!(t_next > t)) break;  // the step vanished in float32
    t = t_next;
  }
}

// The count pass: counts the occupied steps.
struct MarchCount {
  int64_t n = 0;
  PE_HD bool operator()(float, float) {
    ++n;
    return true;
  }
};

// The fill pass writes ray r's slice [start, start + count) that the count pass sized, and only
// that: it stops when the slice is full, so no write depends on the two passes agreeing (they
// run two instantiations of march_ray over inputs that another stream or thread could change in
// between). pad() fills what the march left empty with zero-length samples [t, t] at the last
// written end, so ray_indices always matches packed_info.
struct MarchFill {
  int64_t ray, pos, end;
  int64_t* ray_indices;
  float *t_starts, *t_ends;
  float last;  // t_end of the last sample written (t_min before the first)
  PE_HD bool operator()(float t0, float t1) {
    ray_indices[pos] = ray;
    t_starts[pos] = t0;
    t_ends[pos] = t1;
    last = t1;
    return ++pos < end;
  }
  PE_HD void pad() {
    for (; pos < end; ++pos) {
      ray_indices[pos] = ray;
      t_starts[pos] = last;
      t_ends[pos] = last;
    }
  }
};

// Fill pass of ray r (see MarchFill); count = counts[r] from the count pass.
PE_HD void march_fill_ray(const MarchGrid& g, const MarchBox& box, const MarchRays& rays,
                          int64_t r, int64_t start, int64_t count, int64_t* ray_indices,
                          float* t_starts, float* t_ends) {
  if (count <= 0) return;
  MarchFill fill{r, start, start + count, ray_indices, t_starts, t_ends, rays.t_min[r]};
  march_ray(g, box, rays, r, fill);
  fill.pad();
}

// ---------------------------------------------------------------------------------------------
// Launchers: raw pointers only, no torch; T = float or double. The CUDA ones return 0 or the
// cudaError_t of the failed launch.

namespace cpu {
template <typename T>
void ray_aabb_intersect(int64_t N, int64_t M, const T* rays_o, const T* rays_d, const T* aabbs,
                        T near_plane, T far_plane, T miss_value, T* t_mins, T* t_maxs, bool* hits);
void ray_march_count(int64_t R, const MarchGrid& g, const MarchRays& rays, int64_t* counts);
void ray_march_fill(int64_t R, const MarchGrid& g, const MarchRays& rays, const int64_t* starts,
                    const int64_t* counts, int64_t* ray_indices, float* t_starts, float* t_ends);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
namespace cuda {
template <typename T>
int ray_aabb_intersect(int64_t N, int64_t M, const T* rays_o, const T* rays_d, const T* aabbs,
                       T near_plane, T far_plane, T miss_value, T* t_mins, T* t_maxs, bool* hits,
                       cudaStream_t stream);
int ray_march_count(int64_t R, const MarchGrid& g, const MarchRays& rays, int64_t* counts,
                    cudaStream_t stream);
int ray_march_fill(int64_t R, const MarchGrid& g, const MarchRays& rays, const int64_t* starts,
                   const int64_t* counts, int64_t* ray_indices, float* t_starts, float* t_ends,
                   cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
