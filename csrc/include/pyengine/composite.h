// Volume-rendering compositing over packed samples: the per-ray maths shared by the CPU and CUDA
// kernels.
//
// Semantics (pyengine/reference/composite.py is the specification). Ray r owns the samples
// [start_r, start_r + count_r), packed_info[r] = (start_r, count_r). Within a ray, in order:
//   density mode: tau_i = sigma_i (t1_i - t0_i), alpha_i = 1 - exp(-tau_i), T_i = exp(-sum_{j<i} tau_j)
//   alpha mode:   T_i = prod_{j<i} (1 - alpha_j)
//   w_i = T_i alpha_i;  acc[r] = sum_i w_i v_i,  opacity[r] = sum_i w_i,  depth[r] = sum_i w_i t_mid_i
// Samples that no ray covers are not touched here: the host initialises weights and alphas to 0
// and the transmittance to 1 (and their gradients to 0).
//
// Backward: with upstream gradients gw, gT, ga (per sample) and g_acc, g_op, g_depth (per ray),
// fold the per-ray sums into the weight gradient first,
//   g_i = gw_i + <g_acc[r], v_i> + g_op[r] + g_depth[r] t_mid_i,
// then run a reverse scan over the ray with the *relative* suffix
//   U_k = sum_{i>k} prod_{k<j<i} (1 - alpha_j) (g_i alpha_i + gT_i)
//       = g_{k+1} alpha_{k+1} + gT_{k+1} + (1 - alpha_{k+1}) U_{k+1},      U_last = 0,
// which is the usual suffix sum_{i>k} (g_i w_i + gT_i T_i) divided by T_{k+1}. Then
//   density mode: dL/dtau_k   = T_{k+1} (g_k - U_k) + ga_k exp(-tau_k),  dL/dsigma_k = dL/dtau_k dt_k
//   alpha mode:   dL/dalpha_k = T_k (g_k - U_k) + ga_k
//   dL/dv_k = w_k g_acc[r]
// No division by (1 - alpha_k) appears, so an exactly opaque sample (alpha = 1, T = 0 behind it)
// keeps its exact gradient; the recursion only multiplies by factors in [0, 1] and is stable.
//
// Work split: the CPU runs one ray per OpenMP iteration, which walks its samples one by one,
// loading the next sample's inputs before it stores the current one's outputs (composite_ray_fwd
// and _bwd below); the CUDA kernels give each ray a group of lanes that scan it chunk by chunk
// (csrc/cuda/composite.cu) over the same per-sample steps (composite_step, composite_alpha). The
// owner of a ray owns its sample range and its row of acc, so nothing needs atomics. Memory layout: all per-sample arrays
// [S] contiguous, values / grad_values [S, C] and acc / g_acc [R, C] row-major, packed_info [R, 2].
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "pyengine/common.h"

namespace pe {

// Pointers of one forward call, T = float or double.
template <typename T>
struct CompositeFwdPtrs {
  const int64_t* packed_info;      // [R, 2] (start, count)
  const T *t_starts, *t_ends, *x;  // [S]; x is sigma (density mode) or alpha (alpha mode)
  const T* values;                 // [S, C] (unused when C = 0)
  T *weights, *trans, *alphas;     // [S], written for covered samples only
  T *acc, *opacity, *depth;        // [R, C], [R], [R], written for every ray
};

// Pointers of one backward call; grad_x and grad_values may be null (not needed).
template <typename T>
struct CompositeBwdPtrs {
  const int64_t* packed_info;
  const T *t_starts, *t_ends, *x, *values;
  const T* trans;                           // [S] the forward's transmittance
  const T *g_weights, *g_trans, *g_alphas;  // [S]
  const T *g_acc, *g_opacity, *g_depth;     // [R, C], [R], [R]
  T *grad_x, *grad_values;                  // [S], [S, C]
};

// Samples [begin, end) of ray r, clamped into [0, S] so that a malformed packed_info can never
// make a kernel read or write out of bounds (the Python layer rejects it with a clear error).
PE_HD void composite_ray_range(const int64_t* packed_info, int64_t r, int64_t S, int64_t& begin,
                               int64_t& end) {
  int64_t b = packed_info[2 * r], n = packed_info[2 * r + 1];
  b = b < 0 ? 0 : (b > S ? S : b);
  n = n < 0 ? 0 : n;
  begin = b;
  end = n > S - b ? S : b + n;
}

// One forward step of the per-ray scan. `run` is the scan state: the exclusive sum of tau
// (density mode) or the exclusive product of (1 - alpha) (alpha mode); on return it includes
// sample i. Sets T_i and alpha_i.
template <typename T, bool ALPHA>
PE_HD void composite_step(T x, T dt, T& run, T& trans, T& alpha) {
  if (ALPHA) {
    trans = run;
    alpha = x;
    run *= T(1) - x;
  } else {
    const T tau = x * dt;
    trans = pe_exp(-run);
    alpha = -pe_expm1(-tau);  // 1 - exp(-tau), precise for small tau
    run += tau;
  }
}

// alpha_i and 1 - alpha_i for the backward; in density mode 1 - alpha = exp(-tau) is computed
// directly, not by subtraction, so that it keeps its precision when alpha is near 1.
template <typename T, bool ALPHA>
PE_HD void composite_alpha(T x, T dt, T& alpha, T& one_minus) {
  if (ALPHA) {
    alpha = x;
    one_minus = T(1) - x;
  } else {
    const T tau = x * dt;
    alpha = -pe_expm1(-tau);
    one_minus = pe_exp(-tau);
  }
}

#if defined(__CUDACC__)
#define PE_COMPOSITE_UNROLL _Pragma("unroll")
#else
#define PE_COMPOSITE_UNROLL
#endif

// Value channels. CT in [0, kMaxExactC] is the exact count C, known at compile time; CT = 8, 16
// or 32 is an upper bound on the runtime count nc, with the loops over channels predicated; both keep
// the per-ray sums (and, in the backward, g_acc) in registers. CT = kDynamicC takes any nc and
// accumulates in the thread-owned output row instead.
constexpr int kDynamicC = -1;
constexpr int kMaxExactC = 4;

template <int CT>
PE_HD int composite_channels(int nc) {
  return CT >= 0 && CT <= kMaxExactC ? CT : nc;
}

// Per-sample inputs, loaded one sample ahead of their use. The outputs stored in a loop iteration
// may alias its inputs as far as the compiler knows, so it would not hoist the next sample's
// loads above them itself; issuing them early keeps two samples' loads in flight per thread,
// and on a GPU this loop is bound by load latency, not arithmetic.
template <typename T>
struct CompositeFwdSample {
  T t0, t1, x;
};
template <typename T>
PE_HD CompositeFwdSample<T> composite_load(const CompositeFwdPtrs<T>& p, int64_t i) {
  return {p.t_starts[i], p.t_ends[i], p.x[i]};
}

template <typename T>
struct CompositeBwdSample {
  T t0, t1, x, trans, gw, gt, ga;
};
template <typename T>
PE_HD CompositeBwdSample<T> composite_load(const CompositeBwdPtrs<T>& p, int64_t k, bool need_x) {
  CompositeBwdSample<T> s{p.t_starts[k], p.t_ends[k], p.x[k], p.trans[k], T(0), T(0), T(0)};
  if (need_x) {  // the upstream per-sample gradients only enter dL/dx
    s.gw = p.g_weights[k];
    s.gt = p.g_trans[k];
    s.ga = p.g_alphas[k];
  }
  return s;
}

// Sample i's outputs from `run`, the scan up to it (exclusive; updated to include it): writes its
// weight, transmittance and alpha, adds to the ray's opacity and depth, and returns the weight.
template <typename T, bool ALPHA>
PE_HD T composite_sample_out(const CompositeFwdPtrs<T>& p, int64_t i, const CompositeFwdSample<T>& s, T& run,
                             T& opacity, T& depth) {
  T trans, alpha;
  composite_step<T, ALPHA>(s.x, s.t1 - s.t0, run, trans, alpha);
  const T w = trans * alpha;
  p.weights[i] = w;
  p.trans[i] = trans;
  p.alphas[i] = alpha;
  opacity += w;
  depth += w * (s.t0 + s.t1) * T(0.5);
  return w;
}

// g_k, the weight's gradient with the per-ray sums folded in; the values' term <g_acc, v_k> only
// when dL/dx is needed (g_reg holds g_acc for CT > 0).
template <typename T, int CT>
PE_HD T composite_weight_grad(const CompositeBwdSample<T>& s, T g_op, T g_depth, const T* g_reg, const T* g_acc,
                              const T* v, int C, bool need_x) {
  T g = s.gw + g_op + g_depth * (s.t0 + s.t1) * T(0.5);
  if (need_x) {
    if (CT > 0) {
      PE_COMPOSITE_UNROLL
      for (int c = 0; c < CT; ++c)
        if (c < C) g += g_reg[c] * v[c];
    } else {
      for (int c = 0; c < C; ++c) g += g_acc[c] * v[c];
    }
  }
  return g;
}

// dL/dv_k = w_k g_acc[r], into gv.
template <typename T, int CT>
PE_HD void composite_value_grads(T* gv, T w, const T* g_reg, const T* g_acc, int C) {
  if (CT > 0) {
    PE_COMPOSITE_UNROLL
    for (int c = 0; c < CT; ++c)
      if (c < C) gv[c] = w * g_reg[c];
  } else {
    for (int c = 0; c < C; ++c) gv[c] = w * g_acc[c];
  }
}

// dL/dx_k from g_k and the relative suffix U_k (see the top of this file).
template <typename T, bool ALPHA>
PE_HD T composite_x_grad(const CompositeBwdSample<T>& s, T dt, T one_minus, T g, T U) {
  // density: dL/dsigma = dL/dtau dt with T_{k+1} = T_k exp(-tau_k)
  return ALPHA ? s.trans * (g - U) + s.ga : (s.trans * one_minus * (g - U) + s.ga * one_minus) * dt;
}

// Forward of ray r: the exclusive scan, the per-sample outputs and the per-ray sums in one pass.
template <typename T, int CT, bool ALPHA>
PE_HD void composite_ray_fwd(const CompositeFwdPtrs<T>& p, int64_t r, int64_t S, int nc) {
  const int C = composite_channels<CT>(nc);
  int64_t begin, end;
  composite_ray_range(p.packed_info, r, S, begin, end);
  T reg[CT > 0 ? CT : 1];
  T* acc = p.acc + r * C;
  if (CT > 0) {
    PE_COMPOSITE_UNROLL
    for (int c = 0; c < CT; ++c) reg[c] = T(0);
  } else {
    for (int c = 0; c < C; ++c) acc[c] = T(0);
  }
  T run = ALPHA ? T(1) : T(0);
  T opacity = T(0), depth = T(0);
  CompositeFwdSample<T> next{};
  if (begin < end) next = composite_load(p, begin);
  for (int64_t i = begin; i < end; ++i) {
    const CompositeFwdSample<T> s = next;
    if (i + 1 < end) next = composite_load(p, i + 1);
    const T w = composite_sample_out<T, ALPHA>(p, i, s, run, opacity, depth);
    const T* v = p.values + i * C;
    if (CT > 0) {
      PE_COMPOSITE_UNROLL
      for (int c = 0; c < CT; ++c)
        if (c < C) reg[c] += w * v[c];
    } else {
      for (int c = 0; c < C; ++c) acc[c] += w * v[c];
    }
  }
  if (CT > 0) {
    PE_COMPOSITE_UNROLL
    for (int c = 0; c < CT; ++c)
      if (c < C) acc[c] = reg[c];
  }
  p.opacity[r] = opacity;
  p.depth[r] = depth;
}

// Backward of ray r: one reverse pass with the relative suffix U (see the top of this file).
// T_k comes from the forward's saved transmittance; alpha_k and 1 - alpha_k are recomputed.
template <typename T, int CT, bool ALPHA>
PE_HD void composite_ray_bwd(const CompositeBwdPtrs<T>& p, int64_t r, int64_t S, int nc) {
  const int C = composite_channels<CT>(nc);
  int64_t begin, end;
  composite_ray_range(p.packed_info, r, S, begin, end);
  const T* g_acc = p.g_acc + r * C;
  T g_reg[CT > 0 ? CT : 1];
  if (CT > 0) {
    PE_COMPOSITE_UNROLL
    for (int c = 0; c < CT; ++c) g_reg[c] = c < C ? g_acc[c] : T(0);
  }
  const T g_op = p.g_opacity[r], g_depth = p.g_depth[r];
  const bool need_x = p.grad_x != nullptr;
  T U = T(0);
  CompositeBwdSample<T> next{};
  if (begin < end) next = composite_load(p, end - 1, need_x);
  for (int64_t k = end - 1; k >= begin; --k) {
    const CompositeBwdSample<T> s = next;
    if (k > begin) next = composite_load(p, k - 1, need_x);
    const T dt = s.t1 - s.t0;
    T alpha, one_minus;
    composite_alpha<T, ALPHA>(s.x, dt, alpha, one_minus);
    const T w = s.trans * alpha;
    // (all loads of the value row before any store of its gradient row, so that the compiler
    // can issue them together)
    const T g = composite_weight_grad<T, CT>(s, g_op, g_depth, g_reg, g_acc, p.values + k * C, C, need_x);
    if (p.grad_values) composite_value_grads<T, CT>(p.grad_values + k * C, w, g_reg, g_acc, C);
    if (need_x) {
      p.grad_x[k] = composite_x_grad<T, ALPHA>(s, dt, one_minus, g, U);
      U = g * alpha + s.gt + one_minus * U;
    }
  }
}

// Calls fn(CT, ALPHA) with std::integral_constant tags: CT = C for C <= kMaxExactC, else the
// smallest bound of 8, 16 and 32 that holds C, else CT = kDynamicC.
template <int CT>
using CompositeC = std::integral_constant<int, CT>;
template <bool ALPHA, typename Fn>
inline void dispatch_composite_channels(int C, Fn& fn) {
  const std::bool_constant<ALPHA> a;
  switch (C) {
    case 0: fn(CompositeC<0>(), a); return;
    case 1: fn(CompositeC<1>(), a); return;
    case 2: fn(CompositeC<2>(), a); return;
    case 3: fn(CompositeC<3>(), a); return;
    case 4: fn(CompositeC<4>(), a); return;
    default: break;
  }
  if (C <= 8)
    fn(CompositeC<8>(), a);
  else if (C <= 16)
    fn(CompositeC<16>(), a);
  else if (C <= 32)
    fn(CompositeC<32>(), a);
  else
    fn(CompositeC<kDynamicC>(), a);
}
template <typename Fn>
inline void dispatch_composite(int C, bool alpha_mode, Fn&& fn) {
  if (alpha_mode)
    dispatch_composite_channels<true>(C, fn);
  else
    dispatch_composite_channels<false>(C, fn);
}

// ---------------------------------------------------------------------------------------------
// Launchers, T = float or double: raw pointers only, no torch. R rays, S samples, C channels.
// The caller initialises weights / alphas to 0 and trans to 1 (uncovered samples keep them), and
// grad_x / grad_values to 0. The CUDA ones return 0 or the cudaError_t of the failed launch.

namespace cpu {
template <typename T>
void composite_fwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeFwdPtrs<T>& p);
template <typename T>
void composite_bwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeBwdPtrs<T>& p);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
namespace cuda {
template <typename T>
int composite_fwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeFwdPtrs<T>& p,
                  cudaStream_t stream);
template <typename T>
int composite_bwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeBwdPtrs<T>& p,
                  cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
