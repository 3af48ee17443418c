// Multiresolution hash encoding: the per-(point, level) maths shared by the CPU and CUDA kernels.
//
// Semantics (pyengine/reference/hash_encode.py is the specification):
//   u_d   = fma(scale_l, clamp(x_d, 0, 1), 0.5)      base_d = floor(u_d), t_d = u_d - base_d
//   s_d   = t_d (linear) or t_d^2 (3 - 2 t_d) (smoothstep)
//   out_l = sum over the 2^D corners c of w_c * table_l[index(base + c)]
//   w_c   = prod_d (bit_d(c) ? s_d : 1 - s_d)
// index() is dense (sum_d p_d res^d) when the level fits its table, else tcnn's coherent-prime
// XOR hash; both modulo the level size. All arithmetic on indices is uint32, like tcnn.
//
// Memory layout: x [N, D] row-major; params [n_entries, F] (levels concatenated, level l starts at
// entry offset[l]); out / grad_out [N, L * F] with out[n, l * F + f].
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "pyengine/common.h"

namespace pe {

constexpr int kHashMaxLevels = 32;

// Per-level constants, small enough to be passed by value as a kernel argument (~400 bytes).
struct HashLevels {
  uint32_t offset[kHashMaxLevels + 1];  // first table entry of each level; offset[L] = n_entries
  uint32_t res[kHashMaxLevels];         // grid resolution ceil(scale) + 1
  float scale[kHashMaxLevels];          // base * 2^(l log2 b) - 1, float32 like tcnn
  uint32_t hashed_mask;                 // bit l set: level l is hashed
  int n_levels;
};

enum HashInterp : int { kHashLinear = 0, kHashSmoothstep = 1 };

// One launcher call's sizes and pointers (T, P: see the launchers at the end of this file);
// each entry point reads or writes the pointers it names.
template <typename T, typename P>
struct HashArgs {
  int64_t N;             // points
  int D, F, interp;      // input dims, features per level, HashInterp
  const T* x;            // [N, D]
  const P* params;       // [n_entries * F]
  const P* grad_out;     // [N, L * F]                          (bwd, bwd_bwd)
  const T* gg_x;         // [N, D] gradient of grad_x           (bwd_bwd)
  P* out;                // [N, L * F] out (fwd) or d_grad_out  (bwd_bwd, nullable)
  T* grad_x;             // [N, D], zeroed by the caller        (bwd, bwd_bwd; nullable)
  T* grad_params;        // [n_entries * F], zeroed             (bwd, bwd_bwd; nullable)
};

// tcnn's primes. The first is 1 so that neighbouring cells along x stay in one cache line.
PE_HD uint32_t hash_prime(int d) {
  return d == 0 ? 1u : d == 1 ? 2654435761u : d == 2 ? 805459861u : 3674653429u;
}

// Table index of the 2^D corners of one cell, with the per-dim terms computed once:
// term[d][b] = (base_d + b) * prime_d (hashed) or (base_d + b) * res^d (dense). A hashed level
// always has a power-of-two size (it is capped at 2^log2_hashmap_size), so its modulo is a mask;
// a dense index exceeds the size only on the far face at x = 1, hence the rare modulo.
template <int D>
struct CornerIndex {
  uint32_t term[D][2];
  uint32_t size;
  bool hashed;
  PE_HD CornerIndex(const uint32_t (&base)[D], uint32_t res, uint32_t size_, bool hashed_)
      : size(size_), hashed(hashed_) {
    uint32_t stride = 1;
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const uint32_t m = hashed ? hash_prime(d) : stride;
      term[d][0] = base[d] * m;
      term[d][1] = (base[d] + 1u) * m;
      stride *= res;
    }
  }
  PE_HD uint32_t operator()(int corner) const {
    uint32_t idx = 0;
    if (hashed) {
#pragma unroll
      for (int d = 0; d < D; ++d) idx ^= term[d][(corner >> d) & 1];
      return idx & (size - 1u);
    }
#pragma unroll
    for (int d = 0; d < D; ++d) idx += term[d][(corner >> d) & 1];
    return idx < size ? idx : idx % size;
  }
};

// The cell a point falls into at one level, with interpolation weights and their derivatives
// with respect to x (scale folded in, zero along dims where x was clamped).
template <typename T, int D>
struct GridCell {
  uint32_t base[D];
  T s[D];    // interpolation weight towards the upper corner
  T ds[D];   // d s / d x
  T dds[D];  // d^2 s / d x^2 (zero for linear)
};

template <typename T, int D>
PE_HD void grid_cell(const T* x, T scale, int interp, GridCell<T, D>& c) {
#pragma unroll
  for (int d = 0; d < D; ++d) {
    T xi = x[d];
    const bool inside = xi >= T(0) && xi <= T(1);
    xi = xi >= T(0) ? (xi <= T(1) ? xi : T(1)) : T(0);  // NaN reads as 0
    const T u = pe_fma(scale, xi, T(0.5));
    const T fl = pe_floor(u);
    c.base[d] = static_cast<uint32_t>(static_cast<int>(fl));
    const T t = u - fl;
    if (interp == kHashSmoothstep) {
      c.s[d] = t * t * (T(3) - T(2) * t);
      c.ds[d] = T(6) * t * (T(1) - t) * scale;
      c.dds[d] = (T(6) - T(12) * t) * scale * scale;
    } else {
      c.s[d] = t;
      c.ds[d] = scale;
      c.dds[d] = T(0);
    }
    if (!inside) {
      c.ds[d] = T(0);
      c.dds[d] = T(0);
    }
  }
}

// w_c and its factors f_d = bit ? s_d : 1 - s_d.
template <typename T, int D>
PE_HD T corner_weight(const GridCell<T, D>& c, int corner, T (&fac)[D]) {
  T w = T(1);
#pragma unroll
  for (int d = 0; d < D; ++d) {
    fac[d] = ((corner >> d) & 1) ? c.s[d] : T(1) - c.s[d];
    w *= fac[d];
  }
  return w;
}

// Product of fac over all dims except a and b (pass b = a, or -1, to skip one dim only).
template <typename T, int D>
PE_HD T prod_except(const T (&fac)[D], int a, int b) {
  T p = T(1);
#pragma unroll
  for (int d = 0; d < D; ++d)
    if (d != a && d != b) p *= fac[d];
  return p;
}

// d w_c / d x_e for every e.
template <typename T, int D>
PE_HD void corner_weight_grad(const GridCell<T, D>& c, int corner, const T (&fac)[D], T (&dw)[D]) {
#pragma unroll
  for (int e = 0; e < D; ++e) {
    const T sg = ((corner >> e) & 1) ? c.ds[e] : -c.ds[e];
    dw[e] = sg * prod_except<T, D>(fac, e, e);
  }
}

// One table row as F values of T. In a device pass with `vec` set (the table's base, hence every
// row, is aligned to min(16, F * sizeof(P)) bytes: see hash_rows_aligned), float rows are read as
// float2 / float4 and 16-bit rows as one 4-, 8- or 16-byte word; otherwise value by value.
template <typename T, int F, typename P>
PE_HD void load_row(const P* row, bool vec, T (&v)[F]) {
#if defined(__CUDA_ARCH__)
  if (vec) {
    if constexpr (std::is_same<P, float>::value && F % 4 == 0) {
#pragma unroll
      for (int f = 0; f < F; f += 4) {
        const float4 q = load_vec<float4>(row + f);
        v[f] = static_cast<T>(q.x);
        v[f + 1] = static_cast<T>(q.y);
        v[f + 2] = static_cast<T>(q.z);
        v[f + 3] = static_cast<T>(q.w);
      }
      return;
    } else if constexpr (std::is_same<P, float>::value && F == 2) {
      const float2 q = load_vec<float2>(row);
      v[0] = static_cast<T>(q.x);
      v[1] = static_cast<T>(q.y);
      return;
    } else if constexpr (sizeof(P) == 2 && F >= 2) {  // F16Storage / BF16Storage, little-endian pairs
      uint32_t w[F / 2];
      if constexpr (F == 2) {
        w[0] = load_vec<uint32_t>(row);
      } else if constexpr (F == 4) {
        const uint2 q = load_vec<uint2>(row);
        w[0] = q.x;
        w[1] = q.y;
      } else {
        const uint4 q = load_vec<uint4>(row);
        w[0] = q.x;
        w[1] = q.y;
        w[2] = q.z;
        w[3] = q.w;
      }
#pragma unroll
      for (int i = 0; i < F / 2; ++i) {
        v[2 * i] = load_as<T>(P{static_cast<uint16_t>(w[i] & 0xffffu)});
        v[2 * i + 1] = load_as<T>(P{static_cast<uint16_t>(w[i] >> 16)});
      }
      return;
    }
  }
#else
  (void)vec;
#endif
#pragma unroll
  for (int f = 0; f < F; ++f) v[f] = load_as<T>(row[f]);
}

// Whether load_row may use vector loads on a table starting at `table`.
template <typename P>
inline bool hash_rows_aligned(const P* table, int F) {
  const size_t align = static_cast<size_t>(F) * sizeof(P) < 16 ? static_cast<size_t>(F) * sizeof(P) : 16;
  return F > 1 && sizeof(P) <= 4 && reinterpret_cast<uintptr_t>(table) % align == 0;
}

// Forward for one point and one level: out[f] = sum_c w_c table[idx_c, f].
template <typename T, int D, int F, typename P>
PE_HD void hash_level_fwd(const GridCell<T, D>& c, const P* table, uint32_t res, uint32_t size,
                          bool hashed, T (&out)[F], bool vec = false) {
#pragma unroll
  for (int f = 0; f < F; ++f) out[f] = T(0);
  const CornerIndex<D> index(c.base, res, size, hashed);
#pragma unroll
  for (int corner = 0; corner < (1 << D); ++corner) {
    T fac[D];
    const T w = corner_weight<T, D>(c, corner, fac);
    T v[F];
    load_row<T, F, P>(table + static_cast<size_t>(index(corner)) * F, vec, v);
#pragma unroll
    for (int f = 0; f < F; ++f) out[f] += w * v[f];
  }
}

// Backward for one point and one level, given g[f] = dL/dout[f]:
//   dL/dtable[idx_c, f] += w_c g[f]                      (through add, an atomic where needed)
//   dx[e]               += sum_c (dw_c/dx_e) sum_f g[f] table[idx_c, f]
template <typename T, int D, int F, typename P, typename G, typename Add>
PE_HD void hash_level_bwd(const GridCell<T, D>& c, const P* table, G* gtable, uint32_t res,
                          uint32_t size, bool hashed, const T (&g)[F], bool need_dparams,
                          bool need_dx, T (&dx)[D], Add& add, bool vec = false) {
  const CornerIndex<D> index(c.base, res, size, hashed);
#pragma unroll
  for (int corner = 0; corner < (1 << D); ++corner) {
    T fac[D];
    const T w = corner_weight<T, D>(c, corner, fac);
    const size_t idx = static_cast<size_t>(index(corner)) * F;
    if (need_dparams) {
      T v[F];
#pragma unroll
      for (int f = 0; f < F; ++f) v[f] = w * g[f];
      add.template vec<F>(gtable + idx, v);
    }
    if (need_dx) {
      T t[F];
      load_row<T, F, P>(table + idx, vec, t);
      T dot = T(0);
#pragma unroll
      for (int f = 0; f < F; ++f) dot += g[f] * t[f];
      T dw[D];
      corner_weight_grad<T, D>(c, corner, fac, dw);
#pragma unroll
      for (int e = 0; e < D; ++e) dx[e] += dot * dw[e];
    }
  }
}

// Double backward for one point and one level. The backward above maps (g, x, table) to
// (dtable, dx); given gg = dL/d(dx) [D] this returns the terms of dL/dg, dL/dx and dL/dtable
// that flow through dx. (The terms through dtable are the forward and the input-backward with
// the table replaced by dL/d(dtable); the Python layer adds those.) With a_c = sum_e gg_e dw_c/dx_e:
//   dL/dtable[idx_c, f] += a_c g[f]
//   dL/dg[f]            += sum_c a_c table[idx_c, f]
//   dL/dx_k             += sum_c (sum_f g[f] table[idx_c, f]) sum_e gg_e d^2 w_c / dx_e dx_k
template <typename T, int D, int F, typename P, typename G, typename Add>
PE_HD void hash_level_bwd_bwd(const GridCell<T, D>& c, const P* table, G* gtable, uint32_t res,
                              uint32_t size, bool hashed, const T (&g)[F], const T (&gg)[D],
                              bool need_dparams, bool need_dg, bool need_dx, T (&dg)[F],
                              T (&dx)[D], Add& add, bool vec = false) {
  const CornerIndex<D> index(c.base, res, size, hashed);
#pragma unroll
  for (int corner = 0; corner < (1 << D); ++corner) {
    T fac[D], dw[D], sgn_ds[D];
    corner_weight<T, D>(c, corner, fac);
    corner_weight_grad<T, D>(c, corner, fac, dw);
    T a = T(0);
#pragma unroll
    for (int e = 0; e < D; ++e) {
      a += gg[e] * dw[e];
      sgn_ds[e] = ((corner >> e) & 1) ? c.ds[e] : -c.ds[e];
    }
    const size_t idx = static_cast<size_t>(index(corner)) * F;
    if (need_dparams) {
      T v[F];
#pragma unroll
      for (int f = 0; f < F; ++f) v[f] = a * g[f];
      add.template vec<F>(gtable + idx, v);
    }
    if (need_dg || need_dx) {
      T t[F];
      load_row<T, F, P>(table + idx, vec, t);
      T dot = T(0);
#pragma unroll
      for (int f = 0; f < F; ++f) {
        if (need_dg) dg[f] += a * t[f];
        dot += g[f] * t[f];
      }
      if (need_dx) {
#pragma unroll
        for (int k = 0; k < D; ++k) {
          // diagonal: w is linear in each s_k, so only s_k'' contributes
          const T sgn_dds = ((corner >> k) & 1) ? c.dds[k] : -c.dds[k];
          T h = gg[k] * sgn_dds * prod_except<T, D>(fac, k, k);
#pragma unroll
          for (int e = 0; e < D; ++e)
            if (e != k) h += gg[e] * sgn_ds[e] * sgn_ds[k] * prod_except<T, D>(fac, e, k);
          dx[k] += dot * h;
        }
      }
    }
  }
}

// Calls fn(D, F) with std::integral_constant tags for a runtime (D, F) pair; false if the pair
// has no instantiation.
template <typename Fn>
inline bool dispatch_hash_dims(int D, int F, Fn&& fn) {
#define PE_HASH_CASE(d, f)                                                        \
  if (D == d && F == f) {                                                         \
    fn(std::integral_constant<int, d>(), std::integral_constant<int, f>());       \
    return true;                                                                  \
  }
#define PE_HASH_DCASE(d) PE_HASH_CASE(d, 1) PE_HASH_CASE(d, 2) PE_HASH_CASE(d, 4) PE_HASH_CASE(d, 8)
  PE_HASH_DCASE(2) PE_HASH_DCASE(3) PE_HASH_DCASE(4)
#undef PE_HASH_DCASE
#undef PE_HASH_CASE
  return false;
}

// ---------------------------------------------------------------------------------------------
// Launchers: raw pointers only, no torch. T is the compute type, P the table's storage type: T = P
// = float or double, or, on CUDA only, T = float with P = F16Storage or BF16Storage (the CPU path
// converts such tables to float first). The CUDA launchers return 0 or the cudaError_t of the
// failed launch.

namespace cpu {
template <typename T>
void hash_encode_fwd(const HashLevels& lv, const HashArgs<T, T>& a);
template <typename T>
void hash_encode_bwd(const HashLevels& lv, const HashArgs<T, T>& a);
template <typename T>
void hash_encode_bwd_bwd(const HashLevels& lv, const HashArgs<T, T>& a);
}  // namespace cpu

#ifdef PE_CUDA_LAUNCHERS
namespace cuda {
template <typename T, typename P>
int hash_encode_fwd(const HashLevels& lv, const HashArgs<T, P>& a, cudaStream_t stream);
template <typename T, typename P>
int hash_encode_bwd(const HashLevels& lv, const HashArgs<T, P>& a, cudaStream_t stream);
template <typename T, typename P>
int hash_encode_bwd_bwd(const HashLevels& lv, const HashArgs<T, P>& a, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pe
