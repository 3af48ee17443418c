// CPU kernels of composite: OpenMP loops over the per-ray maths of pyengine/composite.h.
//
// Work split: one ray per iteration; the iteration owns the ray's samples and its rows of the
// per-ray outputs, so nothing is shared between threads. Rays differ in length (empty rays next
// to rays of hundreds of samples), so the loop is scheduled dynamically in chunks of rays large
// enough (kChunk) to keep the scheduling cost small next to the work.
//
// float32 runs a blocked form of composite_ray_fwd / composite_ray_bwd written for the CPU's
// vector units (float64 runs those shared functions themselves, as the CUDA kernels do). A ray
// is walked in blocks of kBlockFwd / kBlockBwd samples; a block's inputs are copied into small
// stack arrays (in L1), padded to whole vectors, and processed in short passes. Only the scans are
// sequential: the running sum of tau (or product of 1 - alpha) in the forward, the suffix U in
// the backward; every other pass (tau, the two exponentials, weights, the backward's gradient
// formulas) is written with float vectors of L lanes (GCC / Clang vector extensions), because
// libm's expf / expm1f are scalar calls that cost more than the whole rest of a sample. The
// exponentials are a polynomial (exp_split, within 2 float ulps of libm). Each sample's maths
// and the order of its operations are those of composite.h, which documents them.
//
// L = 4 is the baseline (SSE2 on x86-64, NEON on ARM). On x86-64 the same code is also compiled
// with L = 8 for AVX2 + FMA (a target attribute on the per-chunk functions, everything below
// them inlined), and taken when the CPU has both: about 1.5x faster forward on one core.
#include "pyengine/composite.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace pe {
namespace cpu {
namespace {

constexpr int64_t kChunk = 64;
// Samples per block, multiples of the vector lanes: the measured best on a Zen core with 128-sample
// rays (the backward, with twice the arrays in flight, prefers longer blocks).
constexpr int kBlockFwd = 64, kBlockBwd = 128;

// Everything below the per-chunk functions is force-inlined, so that it is compiled for the
// target of the chunk function that calls it (a target attribute does not reach callees). The
// 8-float helpers are therefore never called across the ABI that -Wpsabi warns about.
#define PE_VEC inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// Vectors of L floats. Loads and stores go through memcpy (no alignment assumed); masks are
// combined with bit operations rather than the vector ternary, which not every compiler has.
template <int L>
struct Vec {
  typedef float F __attribute__((vector_size(4 * L)));
};
template <int L>
using Vf = typename Vec<L>::F;
template <class V>
using MaskOf = decltype(V{} < V{});  // the int32 vector of a comparison
template <class V>
constexpr int lanes_of = sizeof(V) / sizeof(float);

template <class V>
PE_VEC V vload(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <class V>
PE_VEC void vstore(float* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}
template <class V>
PE_VEC V vsplat(float a) {
  return V{} + a;
}
template <class V>
PE_VEC V vselect(MaskOf<V> mask, V a, V b) {
  using M = MaskOf<V>;
  return (V)((mask & (M)a) | (~mask & (M)b));
}
template <class V>
PE_VEC float vsum(V v) {
  float s = 0.0f;
  for (int l = 0; l < lanes_of<V>; ++l) s += v[l];
  return s;
}

// x = n ln2 + r with n an integer and |r| <= ln2 / 2: scale = 2^n and em1 = expm1(r) by its
// Taylor polynomial (the first neglected term, r^8 / 8!, is below 2e-8 |r|). Then
// exp(x) = scale + scale em1 and expm1(x) = scale em1 + (scale - 1), which is em1 itself for
// |x| < ln2 / 2 (no cancellation for small x). x is clamped to [-88, 88]: below -87.68 (where
// expf is subnormal) n = -127 gives the bit pattern 0, scale = 0, so exp flushes to 0 and expm1
// to -1; exp(88) is the largest result (only negative densities get there).
template <class V>
PE_VEC void exp_split(V x, V& scale, V& em1) {
  x = vselect<V>(x < -88.0f, vsplat<V>(-88.0f), x);
  x = vselect<V>(x > 88.0f, vsplat<V>(88.0f), x);
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const V n = (x * 1.44269504089f + kRound) - kRound;
  // Cody-Waite: ln2 = 0.693359375 (few bits, so n times it is exact) - 2.12194440e-4
  const V r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  const V p = 1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))));
  em1 = r + (r * r) * p;
  scale = (V)((__builtin_convertvector(n, MaskOf<V>) + 127) << 23);
}

template <class V>
PE_VEC V vexp(V x) {
  V scale, em1;
  exp_split(x, scale, em1);
  return scale + scale * em1;
}

// Density mode: alpha = 1 - exp(-tau) = -expm1(-tau) and one_minus = exp(-tau), both to full
// relative precision (composite_alpha). Alpha mode: alpha = x, one_minus = 1 - x.
template <bool ALPHA, class V>
PE_VEC void valpha(V x, V dt, V& alpha, V& one_minus) {
  if (ALPHA) {
    alpha = x;
    one_minus = 1.0f - x;
  } else {
    V scale, em1;
    exp_split(-(x * dt), scale, em1);
    one_minus = scale + scale * em1;
    alpha = (1.0f - scale) - scale * em1;
  }
}

// n floats from src to dst, zeros after them up to the next multiple of L.
template <int L>
PE_VEC void load_block(float* dst, const float* src, int n) {
  std::memcpy(dst, src, n * sizeof(float));
  for (int j = n; j % L; ++j) dst[j] = 0.0f;
}

// Lane l of the k-th vector of a group of L value rows with CT channels holds channel
// (L k + l) % CT of sample (L k + l) / CT: the weight of sample j spread over those lanes.
template <class V, int CT>
PE_VEC V spread(const float* w, int k) {
  constexpr int L = lanes_of<V>;
  float lanes[L];
  for (int l = 0; l < L; ++l) lanes[l] = w[(L * k + l) / CT];
  return vload<V>(lanes);
}

// acc[c] += sum_j w[j] v[j * CT + c] over n samples, for CT in [1, kMaxExactC]: L samples are CT
// vectors of their value rows, multiplied lane by lane by the spread weights.
template <class V, int CT>
PE_VEC void accumulate_rows(const float* w, const float* v, int n, float* acc) {
  constexpr int L = lanes_of<V>;
  V sum[CT];
  for (int k = 0; k < CT; ++k) sum[k] = vsplat<V>(0.0f);
  int j = 0;
  for (; j + L <= n; j += L)
    for (int k = 0; k < CT; ++k) sum[k] += spread<V, CT>(w + j, k) * vload<V>(v + j * CT + L * k);
  for (int k = 0; k < CT; ++k)
    for (int l = 0; l < L; ++l) acc[(L * k + l) % CT] += sum[k][l];
  for (; j < n; ++j)
    for (int c = 0; c < CT; ++c) acc[c] += w[j] * v[j * CT + c];
}

// Exclusive scan of n values (sum, or product of 1 - x in alpha mode) starting from run; run
// is updated. Two independent chains, one per half of the block, then the second half is
// shifted by the first's total: half the sequential latency of one chain.
template <bool ALPHA>
PE_VEC void exclusive_scan(const float* in, float* out, int n, float& run) {
  const int h = n / 2;
  float r0 = ALPHA ? 1.0f : 0.0f, r1 = r0;
  for (int j = 0; j < h; ++j) {
    out[j] = r0;
    out[h + j] = r1;
    if (ALPHA) {
      r0 *= 1.0f - in[j];
      r1 *= 1.0f - in[h + j];
    } else {
      r0 += in[j];
      r1 += in[h + j];
    }
  }
  if (n % 2) {
    out[n - 1] = r1;
    r1 = ALPHA ? r1 * (1.0f - in[n - 1]) : r1 + in[n - 1];
  }
  // the first half starts from run, the second from run and the first half's total
  const float lo = run, hi = ALPHA ? run * r0 : run + r0;
  for (int j = 0; j < h; ++j) out[j] = ALPHA ? lo * out[j] : lo + out[j];
  for (int j = h; j < n; ++j) out[j] = ALPHA ? hi * out[j] : hi + out[j];
  run = ALPHA ? hi * r1 : hi + r1;
}

// Forward of ray r in float32 (composite_ray_fwd's maths, blocked). CT as there: the exact
// channel count for CT <= kMaxExactC (the sums stay in registers), else the sums accumulate in
// the ray's own row of acc.
template <int L, int CT, bool ALPHA>
PE_VEC void ray_fwd_f32(const CompositeFwdPtrs<float>& p, int64_t r, int64_t S, int nc) {
  using V = Vf<L>;
  constexpr bool kExact = CT >= 0 && CT <= kMaxExactC;
  const int C = composite_channels<CT>(nc);
  int64_t begin, end;
  composite_ray_range(p.packed_info, r, S, begin, end);
  float* acc = p.acc + r * C;
  float reg[kExact && CT > 0 ? CT : 1] = {};
  if (!kExact)
    for (int c = 0; c < C; ++c) acc[c] = 0.0f;
  float run = ALPHA ? 1.0f : 0.0f;  // exclusive sum of tau, or exclusive product of 1 - alpha
  V opacity = vsplat<V>(0.0f), depth = vsplat<V>(0.0f);
  alignas(64) float t0[kBlockFwd], t1[kBlockFwd], xs[kBlockFwd], excl[kBlockFwd], w[kBlockFwd], tr[kBlockFwd], al[kBlockFwd];
  for (int64_t b = begin; b < end; b += kBlockFwd) {
    const int n = static_cast<int>(std::min<int64_t>(kBlockFwd, end - b));
    const int nv = (n + L - 1) / L * L;
    if (nv > kBlockFwd) __builtin_unreachable();  // (n <= kBlockFwd, a multiple of L: no overflow warnings)
    load_block<L>(t0, p.t_starts + b, n);
    load_block<L>(t1, p.t_ends + b, n);
    load_block<L>(xs, p.x + b, n);  // padding: x = 0, so alpha = 0 and w = 0
    if (ALPHA) {
      exclusive_scan<true>(xs, excl, n, run);
    } else {
      for (int j = 0; j < nv; j += L) vstore(tr + j, vload<V>(xs + j) * (vload<V>(t1 + j) - vload<V>(t0 + j)));
      exclusive_scan<false>(tr, excl, n, run);  // tr holds tau here
    }
    for (int j = n; j < nv; ++j) excl[j] = 0.0f;
    for (int j = 0; j < nv; j += L) {
      const V a0 = vload<V>(t0 + j), a1 = vload<V>(t1 + j), e = vload<V>(excl + j);
      V alpha, one_minus;
      valpha<ALPHA>(vload<V>(xs + j), a1 - a0, alpha, one_minus);
      const V T = ALPHA ? e : vexp(-e), wj = T * alpha;
      vstore(w + j, wj);
      vstore(tr + j, T);
      vstore(al + j, alpha);
      opacity += wj;
      depth += wj * (a0 + a1) * 0.5f;
    }
    std::memcpy(p.weights + b, w, n * sizeof(float));
    std::memcpy(p.trans + b, tr, n * sizeof(float));
    std::memcpy(p.alphas + b, al, n * sizeof(float));
    const float* v = p.values + b * C;
    if constexpr (kExact && CT > 0) {
      accumulate_rows<V, CT>(w, v, n, reg);
    } else if (!kExact) {
      for (int j = 0; j < n; ++j)
        for (int c = 0; c < C; ++c) acc[c] += w[j] * v[j * C + c];
    }
  }
  if (kExact)
    for (int c = 0; c < CT; ++c) acc[c] = reg[c];
  p.opacity[r] = vsum(opacity);
  p.depth[r] = vsum(depth);
}

// Value rows of the backward for CT in [1, kMaxExactC], n samples: gv[j * CT + c] = w[j] g[c]
// (when gv is not null) and dot[j] = <g, v_j>. Vectors as in accumulate_rows; gk[k] holds g
// repeated along the lanes of the k-th vector.
template <class V, int CT>
PE_VEC void value_rows_bwd(const float* w, const float* v, const float* g, int n, float* gv, float* dot) {
  constexpr int L = lanes_of<V>;
  V gk[CT];
  for (int k = 0; k < CT; ++k) {
    float lanes[L];
    for (int l = 0; l < L; ++l) lanes[l] = g[(L * k + l) % CT];
    gk[k] = vload<V>(lanes);
  }
  int j = 0;
  for (; j + L <= n; j += L) {
    alignas(32) float prod[L * CT];
    for (int k = 0; k < CT; ++k) {
      vstore(prod + L * k, vload<V>(v + j * CT + L * k) * gk[k]);
      if (gv) vstore(gv + j * CT + L * k, spread<V, CT>(w + j, k) * gk[k]);
    }
    for (int i = 0; i < L; ++i) {
      float d = prod[i * CT];
      for (int c = 1; c < CT; ++c) d += prod[i * CT + c];
      dot[j + i] = d;
    }
  }
  for (; j < n; ++j) {
    float d = 0.0f;
    for (int c = 0; c < CT; ++c) {
      d += g[c] * v[j * CT + c];
      if (gv) gv[j * CT + c] = w[j] * g[c];
    }
    dot[j] = d;
  }
}

// The backward's suffix over a block, U_{j-1} = c_j + om_j U_j with c_j = g_j alpha_j + gT_j,
// entering with U (the suffix after the block) and leaving with the suffix before it; us[j] gets
// U_j, the suffix after sample j. The lower half runs from U = 0 beside its product of om, and is
// shifted by the upper half's result afterwards (U is linear in the incoming suffix): three
// independent chains instead of one.
PE_VEC void suffix_scan(const float* c, const float* om, float* us, float* prod, int n, float& U) {
  const int h = n / 2;
  float u_hi = U, u_lo = 0.0f, q = 1.0f;
  for (int j = n - 1; j >= h; --j) {
    const int i = j - (n - h);  // the lower half's sample in step, when i >= 0
    us[j] = u_hi;
    u_hi = c[j] + om[j] * u_hi;
    if (i >= 0) {
      us[i] = u_lo;
      prod[i] = q;
      u_lo = c[i] + om[i] * u_lo;
      q *= om[i];
    }
  }
  for (int i = 0; i < h; ++i) us[i] += prod[i] * u_hi;
  U = u_lo + q * u_hi;
}

// Backward of ray r in float32 (composite_ray_bwd's maths, blocked): blocks from the ray's end;
// within a block a vector pass computes alpha, 1 - alpha and w, the value rows give dL/dv and
// <g_acc, v>, the suffix U runs backwards, and a last vector pass forms dL/dx. Null upstream
// per-sample gradients count as zeros.
template <int L, int CT, bool ALPHA>
PE_VEC void ray_bwd_f32(const CompositeBwdPtrs<float>& p, int64_t r, int64_t S, int nc) {
  using V = Vf<L>;
  constexpr bool kExact = CT >= 0 && CT <= kMaxExactC;
  const int C = composite_channels<CT>(nc);
  int64_t begin, end;
  composite_ray_range(p.packed_info, r, S, begin, end);
  const float* g_acc = p.g_acc + r * C;
  const float g_op = p.g_opacity[r], g_depth = p.g_depth[r];
  const bool need_x = p.grad_x != nullptr;
  float U = 0.0f;
  alignas(64) float t0[kBlockBwd], t1[kBlockBwd], xs[kBlockBwd], tr[kBlockBwd], gw[kBlockBwd], gt[kBlockBwd], ga[kBlockBwd],
      al[kBlockBwd], om[kBlockBwd], w[kBlockBwd], dot[kBlockBwd], c[kBlockBwd], us[kBlockBwd], prod[kBlockBwd];
  for (int64_t stop = end; stop > begin; stop -= kBlockBwd) {
    const int64_t b = std::max<int64_t>(begin, stop - kBlockBwd);
    const int n = static_cast<int>(stop - b);
    const int nv = (n + L - 1) / L * L;
    if (nv > kBlockBwd) __builtin_unreachable();  // (n <= kBlockBwd, a multiple of L: no overflow warnings)
    load_block<L>(t0, p.t_starts + b, n);
    load_block<L>(t1, p.t_ends + b, n);
    load_block<L>(xs, p.x + b, n);
    load_block<L>(tr, p.trans + b, n);
    for (int j = 0; j < nv; j += L) {
      V alpha, one_minus;
      valpha<ALPHA>(vload<V>(xs + j), vload<V>(t1 + j) - vload<V>(t0 + j), alpha, one_minus);
      vstore(al + j, alpha);
      vstore(om + j, one_minus);
      vstore(w + j, vload<V>(tr + j) * alpha);
    }
    const float* v = p.values + b * C;
    float* gv = p.grad_values ? p.grad_values + b * C : nullptr;
    if constexpr (kExact && CT > 0) {
      value_rows_bwd<V, CT>(w, v, g_acc, n, gv, dot);
    } else if (!kExact) {
      for (int j = 0; j < n; ++j) {
        float d = 0.0f;
        for (int ch = 0; ch < C; ++ch) {
          d += g_acc[ch] * v[j * C + ch];
          if (gv) gv[j * C + ch] = w[j] * g_acc[ch];
        }
        dot[j] = d;
      }
    }
    if (!need_x) continue;
    for (const auto& [dst, src] : {std::pair{gw, p.g_weights}, std::pair{gt, p.g_trans}, std::pair{ga, p.g_alphas}}) {
      if (src)
        load_block<L>(dst, src + b, n);
      else
        std::memset(dst, 0, nv * sizeof(float));
    }
    if (C == 0)
      for (int j = 0; j < nv; ++j) dot[j] = 0.0f;
    for (int j = n; j < nv; ++j) dot[j] = 0.0f;
    // g_k = gw_k + g_op + g_depth t_mid_k + <g_acc, v_k>, and the suffix's term g_k alpha_k + gT_k
    for (int j = 0; j < nv; j += L) {
      const V a0 = vload<V>(t0 + j), a1 = vload<V>(t1 + j);
      const V g = (vload<V>(gw + j) + g_op + g_depth * ((a0 + a1) * 0.5f)) + vload<V>(dot + j);
      vstore(dot + j, g);
      vstore(c + j, g * vload<V>(al + j) + vload<V>(gt + j));
    }
    suffix_scan(c, om, us, prod, n, U);
    for (int j = 0; j < nv; j += L) {
      const V T = vload<V>(tr + j), gk = vload<V>(dot + j), Uk = vload<V>(us + j), gak = vload<V>(ga + j);
      V gx;
      if (ALPHA) {
        gx = T * (gk - Uk) + gak;
      } else {  // dL/dsigma = dL/dtau dt, with T_{k+1} = T_k exp(-tau_k)
        const V one_minus = vload<V>(om + j);
        gx = (T * one_minus * (gk - Uk) + gak * one_minus) * (vload<V>(t1 + j) - vload<V>(t0 + j));
      }
      vstore(c + j, gx);
    }
    std::memcpy(p.grad_x + b, c, n * sizeof(float));
  }
}

// Rays [r0, r1) of one call, with L-float vectors: the functions that carry a target attribute.
template <int L, int CT, bool ALPHA>
struct Rays {
  static void fwd(const CompositeFwdPtrs<float>& p, int64_t r0, int64_t r1, int64_t S, int C) {
    for (int64_t r = r0; r < r1; ++r) ray_fwd_f32<L, CT, ALPHA>(p, r, S, C);
  }
  static void bwd(const CompositeBwdPtrs<float>& p, int64_t r0, int64_t r1, int64_t S, int C) {
    for (int64_t r = r0; r < r1; ++r) ray_bwd_f32<L, CT, ALPHA>(p, r, S, C);
  }
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PE_COMPOSITE_AVX2 1
template <int CT, bool ALPHA>
struct Rays<8, CT, ALPHA> {
  __attribute__((target("avx2,fma"))) static void fwd(const CompositeFwdPtrs<float>& p, int64_t r0, int64_t r1,
                                                       int64_t S, int C) {
    for (int64_t r = r0; r < r1; ++r) ray_fwd_f32<8, CT, ALPHA>(p, r, S, C);
  }
  __attribute__((target("avx2,fma"))) static void bwd(const CompositeBwdPtrs<float>& p, int64_t r0, int64_t r1,
                                                       int64_t S, int C) {
    for (int64_t r = r0; r < r1; ++r) ray_bwd_f32<8, CT, ALPHA>(p, r, S, C);
  }
};

// PYENGINE_NO_AVX2=1 forces the 4-float path (tests cover it on AVX2 machines that way).
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          !(std::getenv("PYENGINE_NO_AVX2") && std::getenv("PYENGINE_NO_AVX2")[0] == '1');
  return has;
}
#else
bool cpu_has_avx2() { return false; }
#endif

// The OpenMP loops: chunks of kChunk rays, scheduled dynamically.
template <typename T>
struct Fwd {
  int64_t R, S;
  int C;
  const CompositeFwdPtrs<T>& p;
  template <int CT, bool ALPHA>
  void run() {
    const bool wide = cpu_has_avx2();
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t r0 = 0; r0 < R; r0 += kChunk) {
      const int64_t r1 = std::min(R, r0 + kChunk);
      if constexpr (std::is_same_v<T, float>) {
#ifdef PE_COMPOSITE_AVX2
        if (wide) {
          Rays<8, CT, ALPHA>::fwd(p, r0, r1, S, C);
          continue;
        }
#endif
        Rays<4, CT, ALPHA>::fwd(p, r0, r1, S, C);
      } else {
        for (int64_t r = r0; r < r1; ++r) composite_ray_fwd<T, CT, ALPHA>(p, r, S, C);
      }
    }
    (void)wide;
  }
};

template <typename T>
struct Bwd {
  int64_t R, S;
  int C;
  const CompositeBwdPtrs<T>& p;
  template <int CT, bool ALPHA>
  void run() {
    const bool wide = cpu_has_avx2();
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t r0 = 0; r0 < R; r0 += kChunk) {
      const int64_t r1 = std::min(R, r0 + kChunk);
      if constexpr (std::is_same_v<T, float>) {
#ifdef PE_COMPOSITE_AVX2
        if (wide) {
          Rays<8, CT, ALPHA>::bwd(p, r0, r1, S, C);
          continue;
        }
#endif
        Rays<4, CT, ALPHA>::bwd(p, r0, r1, S, C);
      } else {
        for (int64_t r = r0; r < r1; ++r) composite_ray_bwd<T, CT, ALPHA>(p, r, S, C);
      }
    }
    (void)wide;
  }
};

}  // namespace

template <typename T>
void composite_fwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeFwdPtrs<T>& p) {
  if (R == 0) return;
  Fwd<T> fn{R, S, C, p};
  dispatch_composite(C, alpha_mode,
                     [&](auto ct, auto alpha) { fn.template run<decltype(ct)::value, decltype(alpha)::value>(); });
}

template <typename T>
void composite_bwd(int64_t R, int64_t S, int C, bool alpha_mode, const CompositeBwdPtrs<T>& p) {
  if (R == 0 || (p.grad_x == nullptr && p.grad_values == nullptr)) return;
  Bwd<T> fn{R, S, C, p};
  dispatch_composite(C, alpha_mode,
                     [&](auto ct, auto alpha) { fn.template run<decltype(ct)::value, decltype(alpha)::value>(); });
}

template void composite_fwd<float>(int64_t, int64_t, int, bool, const CompositeFwdPtrs<float>&);
template void composite_fwd<double>(int64_t, int64_t, int, bool, const CompositeFwdPtrs<double>&);
template void composite_bwd<float>(int64_t, int64_t, int, bool, const CompositeBwdPtrs<float>&);
template void composite_bwd<double>(int64_t, int64_t, int, bool, const CompositeBwdPtrs<double>&);

}  // namespace cpu
}  // namespace pe
