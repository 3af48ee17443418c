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

// The cell of x = o + d * t: its level and per-axis indices. Level: the first l with |u_a| < 2^l on
// all axes (nerfacc's floor(log2(max|u|)) + 1, done with exact power-of-two comparisons instead of
// a log2). False outside the coarsest box, or for NaN.
struct MarchCell {
  int level;
  int32_t i[3];
};
PE_HD bool march_cell(const MarchGrid& g, const MarchBox& box, const float* o, const float* d, float t,
                      MarchCell& cell) {
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
  cell.level = level;
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    const float w = rn_add(rn_mul(rn_mul(u[a], inv_scale), 0.5f), 0.5f);
    int32_t i = static_cast<int32_t>(rm_floor(rn_mul(w, static_cast<float>(g.res[a]))));
    cell.i[a] = i < 0 ? 0 : (i >= g.res[a] ? g.res[a] - 1 : i);
  }
  return true;
}

PE_HD bool march_cell_occupied(const MarchGrid& g, const MarchCell& c) {
  const int64_t idx = ((static_cast<int64_t>(c.level) * g.res[0] + c.i[0]) * g.res[1] + c.i[1]) * g.res[2] + c.i[2];
  return g.binaries[idx];
}

// Empty-space skipping. When the lookup at a midpoint finds its cell empty, MarchSkipper::range
// returns the range [lo, hi) of t over which the exact point o + d t stays inside that cell at least
// a margin away from each face; every later midpoint in that range maps to the same (empty) cell
// under march_cell's float32 operations, so the loop skips its lookup. It still walks the same
// lattice of steps (t_next = t + dt(t), in float32 as before), so the samples stay those of the
// step-by-step march, bit for bit; only the lookups of empty cells are saved. A range is worth
// computing only when the cell spans several steps (kMarchSkipSteps): with a 128^3 grid and the
// usual step of sqrt(3) / 1024 of the box, about 5.
//
// The margin bounds the rounding of march_cell: x = o + d t, x - c, (x - c) / h, the scaling and
// w * res each round once (half an ulp), which moves the position by at most a few ulps of
// |o| + |d t| + |c| + 2^l h (world units). The margin is 32 float32 epsilons of that sum, on
// each axis: some 10x more than needed, and about 1e-3 of a 128^3 cell. The range is computed in
// float64 (its own rounding is 1e-9 of the margin). A level-l cell (l > 0) qualifies only when it
// lies outside the level-(l-1) box, so that no point inside it takes the finer level; with a
// resolution divisible by 4 every cell does. No range (lo > hi) where a cell is thinner than two
// margins, the box is degenerate, or the ray's t range is not finite.
constexpr float kMarchSkipSteps = 3.0f;

struct MarchSkip {
  double lo, hi;
};

// The per-ray constants of the ranges, set up once per ray.
struct MarchSkipper {
  double o[3], inv_d[3], c[3], h[3], two_over_res[3], mag[3];
  float min_width0;  // the narrowest level-0 cell, world units
  bool ok;
  PE_HD MarchSkipper(const MarchGrid& g, const MarchBox& box, const float* o_, const float* d_,
                     float t_min, float t_max) {
    const float tb = rm_abs(t_min) > rm_abs(t_max) ? rm_abs(t_min) : rm_abs(t_max);
    ok = rm_finite(tb);
    min_width0 = static_cast<float>(INFINITY);
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      o[a] = o_[a];
      inv_d[a] = d_[a] == 0.0f ? 0.0 : 1.0 / static_cast<double>(d_[a]);
      c[a] = box.center[a];
      h[a] = box.half[a];
      two_over_res[a] = 2.0 / g.res[a];
      mag[a] = static_cast<double>(rm_abs(o_[a])) + 2.0 * rm_abs(d_[a]) * static_cast<double>(tb) +
               rm_abs(box.center[a]);
      ok = ok && h[a] > 0.0;
      const float w = rn_div(rn_mul(2.0f, box.half[a]), static_cast<float>(g.res[a]));
      min_width0 = w < min_width0 ? w : min_width0;
    }
  }
  // The skip range after an empty lookup in `cell` with steps of size dt there.
  PE_HD MarchSkip range(const MarchCell& cell, float dt) const {
    const double inf = static_cast<double>(INFINITY);
    const MarchSkip none{inf, -inf};
    double scale = 1.0;  // 2^level
    for (int k = 0; k < cell.level; ++k) scale *= 2.0;
    if (!ok || !(min_width0 * static_cast<float>(scale) >= kMarchSkipSteps * dt)) return none;
    MarchSkip s{-inf, inf};
    bool outside_finer = cell.level == 0;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const double u_lo = (cell.i[a] * two_over_res[a] - 1.0) * scale;
      const double u_hi = ((cell.i[a] + 1) * two_over_res[a] - 1.0) * scale;
      if (u_lo >= 0.5 * scale || u_hi <= -0.5 * scale) outside_finer = true;
      const double margin = 32.0 * 1.1920928955078125e-07 * (mag[a] + 4.0 * scale * h[a]);
      const double lo = c[a] + u_lo * h[a] + margin, hi = c[a] + u_hi * h[a] - margin;
      if (!(lo < hi)) return none;
      if (inv_d[a] == 0.0) {  // d = 0: x = o exactly at every step
        if (!(o[a] > lo && o[a] < hi)) return none;
        continue;
      }
      double t0 = (lo - o[a]) * inv_d[a], t1 = (hi - o[a]) * inv_d[a];
      if (t0 > t1) {
        const double tmp = t0;
        t0 = t1;
        t1 = tmp;
      }
      s.lo = t0 > s.lo ? t0 : s.lo;
      s.hi = t1 < s.hi ? t1 : s.hi;
    }
    return outside_finer ? s : none;
  }
};

// The loop over ray r's steps, shared by the count pass and the fill pass: at most g.max_steps
// steps; emit(t_start, t_end) is called for every occupied one in marching order and returns
// false to end the ray there. Lookups inside a known-empty cell are skipped (MarchSkipper).
template <typename Emit>
PE_HD void march_ray(const MarchGrid& g, const MarchBox& box, const MarchRays& rays, int64_t r,
                     Emit& emit) {
  const float *o = rays.rays_o + r * 3, *d = rays.rays_d + r * 3;
  const float t_min = rays.t_min[r], t_max = rays.t_max[r];
  if (!(rm_finite(t_min) && rm_finite(t_max) && t_min < t_max)) return;
  float t = rn_add(t_min, rn_mul(rays.jitter ? rays.jitter[r] : 0.0f, march_dt(g, t_min)));
  const MarchSkipper skipper(g, box, o, d, t_min, t_max);
  MarchSkip skip{1.0, 0.0};  // lookups skipped for t_mid in [skip.lo, skip.hi): none yet
  for (int64_t k = 0; k < g.max_steps && t < t_max; ++k) {
    const float t_next = rn_add(t, march_dt(g, t));
    const float t_end = t_next < t_max ? t_next : t_max;
    const float t_mid = rn_mul(rn_add(t, t_end), 0.5f);
    bool occupied = false;
    if (!(t_mid >= skip.lo && t_mid < skip.hi)) {
      MarchCell cell;
      if (march_cell(g, box, o, d, t_mid, cell)) {
        occupied = march_cell_occupied(g, cell);
        if (!occupied) skip = skipper.range(cell, t_end - t);
      }
    }
    if (occupied && !emit(t, t_end)) return;
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
