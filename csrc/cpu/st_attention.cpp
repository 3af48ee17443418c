// CPU kernels of st_attention: OpenMP loops over the maths of pyengine/st_attention.h.
//
// Every work item copies the rows it needs from q, k, v (and g_out) through their strides into
// small contiguous buffers in the compute type A (float for float16 / bfloat16 / float32, double
// for float64), with the position encoding added and the query scaled; every product is then a
// small dense matrix product over those buffers, vectorised over its output columns (`mm` below;
// keys and values are transposed in the buffers where they are the columns). Buffer rows are
// padded to multiples of kPad, so that whole vectors fit; padded key columns are masked to -inf
// before the softmax.
//
// Two paths:
//   short: temporal attention with T <= kShortL (the common case: a few dozen frames). An item is
//          a block of kPixelBlock pixels of one image row. Channels-last q: pixel by pixel, all
//          heads together, each row of q, k, v read as one run of C channels. Other layouts
//          ([B, C, T, H, W] views, whose pixels are contiguous per channel): head by head, the
//          block's pixels together, each (channel, frame) run of pixels read once (float: 8 x 8
//          blocks transposed in registers). Each head's whole T x T score block stays in a small
//          buffer: a plain softmax, no online rescaling.
//   tiled: spatial attention and longer temporal sequences. One work item is (sequence, head,
//          block of kBQ queries); keys and values come in tiles of kBK with an online softmax,
//          so memory stays bounded for any length (a 64 x 64 latent is L = 4096). The next
//          tile's rows are prefetched while one computes.
//
// Backward (FlashAttention-2: P recomputed from lse). The short path does a pixel's dq, dk, dv at
// once, with Delta_i = sum_j P_ij dP_ij from its whole rows (out is not read). The tiled path
// computes Delta_i = <g_out_i, out_i> once, then runs two passes, each item owning what it
// writes, so that nothing is accumulated across threads: pass K, items (key sequence, head,
// block of kKeyBlock keys), loops over every query (frame) that attends to those keys in a fixed
// order and accumulates dk, dv (in spatial mode with cross-frame sources a key frame serves
// several query frames); pass Q, items (sequence, head, block of kBQ queries), accumulates dq
// over all keys. dbias sums over sequences:
//   short path: per-chunk partial sums over a partition of the pixel blocks into kBiasChunks
//               fixed ranges, reduced in chunk order;
//   tiled path: items (bias head, query block) own their dbias rows and loop over the
//               sequences (and heads) in order.
// Neither depends on the number of threads or on the schedule, so reruns are bit-identical.
//
// Vectors: 32 bytes (AVX2 + FMA, through a target attribute on the per-range entry points with
// everything below them inlined, as in composite.cpp; the float product with intrinsics) when the
// CPU has them, else 16 bytes (GCC / Clang vector extensions). PYENGINE_NO_AVX2=1 forces the
// 16-byte path. float exp is a polynomial (Vm::exp); double uses libm.
#include "pyengine/st_attention.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace pe {
namespace cpu {
namespace {

#define PE_VEC inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

constexpr int kPad = 8;              // buffer rows: multiples of 8 values (every vector width)
constexpr int kShortL = 64;          // temporal with T <= kShortL takes the short path
// Tiled path: the forward and the backward's pass Q take items of kBQ queries and key tiles of
// kBK; pass K items of kKeyBlock keys and query tiles of kKeyQ. Larger items load each tile of
// the other side for more rows (tiles are read through strides, from L2 / L3).
constexpr int kBQ = 128, kBK = 64, kKeyBlock = 128, kKeyQ = 64;
constexpr int kMaxRows = 128;  // the largest of the four
constexpr int kMaxTile = kBQ * kBK > kKeyQ * kKeyBlock ? kBQ * kBK : kKeyQ * kKeyBlock;
static_assert(kBQ <= kMaxRows && kBK <= kMaxRows && kKeyBlock <= kMaxRows && kKeyQ <= kMaxRows, "row buffers");
constexpr int64_t kBiasChunks = 64;  // short path with dbias: fixed pixel ranges
constexpr int kPixelBlock = 32;      // short path: pixels (of one image row) per item

PE_VEC int round_up(int n) { return (n + kPad - 1) / kPad * kPad; }

// ---------------------------------------------------------------------------------------------
// Storage conversions (float16 / bfloat16 bits <-> float, round to nearest even).

PE_VEC float to_float(float x) { return x; }
PE_VEC double to_float(double x) { return x; }
PE_VEC float to_float(BF16Storage h) {
  const uint32_t bits = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
PE_VEC float to_float(F16Storage h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu, mant = h.bits & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, NaN
  } else if (exp == 0) {                       // zero, subnormal: mant 2^-24, exact in float
    float f = static_cast<float>(mant) * 5.9604644775390625e-8f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <class A, class S>
PE_VEC A load_as_acc(const S& s) {
  return static_cast<A>(to_float(s));
}

PE_VEC void store_from(float* p, float a) { *p = a; }
PE_VEC void store_from(double* p, double a) { *p = a; }
PE_VEC void store_from(BF16Storage* p, float a) {
  uint32_t x;
  std::memcpy(&x, &a, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    p->bits = static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
    return;
  }
  x += 0x7fffu + ((x >> 16) & 1u);
  p->bits = static_cast<uint16_t>(x >> 16);
}
PE_VEC void store_from(F16Storage* p, float a) {
  uint32_t x;
  std::memcpy(&x, &a, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  uint32_t h;
  if (x >= 0x47800000u) {  // >= 65536 (or inf / NaN): inf, or a quiet NaN
    h = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (x < 0x38800000u) {  // below 2^-14: a subnormal half; adding 0.5 rounds at 2^-24
    float f;
    std::memcpy(&f, &x, 4);
    f += 0.5f;
    uint32_t y;
    std::memcpy(&y, &f, 4);
    h = y - 0x3f000000u;
  } else {  // rebias the exponent, round the 13 dropped bits to nearest even (a carry may give inf)
    h = (x + 0xc8000fffu + ((x >> 13) & 1u)) >> 13;
  }
  p->bits = static_cast<uint16_t>(h | sign);
}

// ---------------------------------------------------------------------------------------------
// Vectors of A with VB bytes: loads and stores through memcpy (no alignment assumed), masks
// combined with bit operations.

template <class A, int VB>
struct Vm {
  typedef A V __attribute__((vector_size(VB)));
  using Mask = decltype(V{} < V{});
  static constexpr int N = VB / static_cast<int>(sizeof(A));

  static PE_VEC V load(const A* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static PE_VEC void store(A* p, V v) { std::memcpy(p, &v, sizeof(v)); }
  // a in every lane: lane 0 shuffled across the vector, which GCC emits as one broadcast (V{} + a
  // keeps an addition, since 0 + a is not a for a = -0, and a list of lanes becomes lane inserts).
  static PE_VEC V splat(A a) {
    V t{};
    t[0] = a;
    if constexpr (N == 8) {
      return __builtin_shufflevector(t, t, 0, 0, 0, 0, 0, 0, 0, 0);
    } else if constexpr (N == 4) {
      return __builtin_shufflevector(t, t, 0, 0, 0, 0);
    } else {
      static_assert(N == 2, "vectors of 2, 4 or 8 lanes");
      return __builtin_shufflevector(t, t, 0, 0);
    }
  }
  static PE_VEC V select(Mask m, V a, V b) { return (V)((m & (Mask)a) | (~m & (Mask)b)); }
  static PE_VEC V vmax(V a, V b) { return select(a > b, a, b); }
  // Horizontal max and sum: halves folded onto each other (log2 N shuffles).
  static PE_VEC V fold(V v, int half) {
    if constexpr (N == 8) {
      return half == 4 ? __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3)
                       : half == 2 ? __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5)
                                   : __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
    } else if constexpr (N == 4) {
      return half == 2 ? __builtin_shufflevector(v, v, 2, 3, 0, 1) : __builtin_shufflevector(v, v, 1, 0, 3, 2);
    } else {
      return __builtin_shufflevector(v, v, 1, 0);
    }
  }
  static PE_VEC A hmax(V v) {
    for (int half = N / 2; half >= 1; half /= 2) v = vmax(v, fold(v, half));
    return v[0];
  }
  static PE_VEC A hsum(V v) {
    for (int half = N / 2; half >= 1; half /= 2) v += fold(v, half);
    return v[0];
  }

  // exp(x). float: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its degree-7 Taylor polynomial
  // (truncation below 1e-8 relative), times 2^n from the exponent bits; x is clamped to
  // [-88, 88], where n = -127 gives 2^n = 0: exp(-inf) = exp(-88) = 0. double: libm per lane.
  static PE_VEC V exp(V x) {
    if constexpr (std::is_same_v<A, float>) {
      x = select(x < -88.0f, splat(-88.0f), x);
      x = select(x > 88.0f, splat(88.0f), x);
      const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
      const V n = (x * 1.44269504089f + kRound) - kRound;
      const V r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // Cody-Waite ln2 = hi - lo
      V p = r * (1.0f / 5040) + 1.0f / 720;
      p = p * r + 1.0f / 120;
      p = p * r + 1.0f / 24;
      p = p * r + 1.0f / 6;
      p = p * r + 0.5f;
      p = p * r + 1.0f;
      p = p * r + 1.0f;
      const V scale = (V)((__builtin_convertvector(n, Mask) + 127) << 23);
      return scale * p;
    } else {
      V y;
      for (int l = 0; l < N; ++l) y[l] = pe_exp(x[l]);
      return y;
    }
  }
};

// ---------------------------------------------------------------------------------------------
// C[M, nv vectors] (+)= A[M, K] B[K, nv vectors]: A(r, k) = a[r ars + k aks] is broadcast (any
// strides, so that A^T costs nothing), B and C are row-major with ldb / ldc. Register blocks of
// RB rows x NV vectors: per k, NV vector loads of B and RB broadcasts feed RB NV FMAs.

template <class A, int VB, int RB, int NV>
PE_VEC void mm_block(int K, const A* a, int64_t ars, int64_t aks, const A* b, int64_t ldb, A* c, int64_t ldc,
                     bool acc) {
  using X = Vm<A, VB>;
  using V = typename X::V;
  constexpr int N = X::N;
  V sum[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) sum[r][v] = acc ? X::load(c + r * ldc + v * N) : X::splat(A(0));
  for (int k = 0; k < K; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = X::load(b + k * ldb + v * N);
    for (int r = 0; r < RB; ++r) {
      const V av = X::splat(a[r * ars + k * aks]);
      for (int v = 0; v < NV; ++v) sum[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) X::store(c + r * ldc + v * N, sum[r][v]);
}

template <class A, int VB, int NV>
PE_VEC void mm_rows(int M, int K, const A* a, int64_t ars, int64_t aks, const A* b, int64_t ldb, A* c,
                    int64_t ldc, bool acc) {
  constexpr int RB = 6;
  int r = 0;
  for (; r + RB <= M; r += RB) mm_block<A, VB, RB, NV>(K, a + r * ars, ars, aks, b, ldb, c + r * ldc, ldc, acc);
  a += r * ars;
  c += r * ldc;
  switch (M - r) {
    case 5: mm_block<A, VB, 5, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    case 4: mm_block<A, VB, 4, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    case 3: mm_block<A, VB, 3, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    case 2: mm_block<A, VB, 2, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    case 1: mm_block<A, VB, 1, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    default: break;
  }
}

template <class A, int VB>
PE_VEC void mm_impl(int M, int nv, int K, const A* a, int64_t ars, int64_t aks, const A* b, int64_t ldb, A* c,
                    int64_t ldc, bool acc) {
  constexpr int N = Vm<A, VB>::N;
  int v = 0;
  for (; v + 2 <= nv; v += 2) mm_rows<A, VB, 2>(M, K, a, ars, aks, b + v * N, ldb, c + v * N, ldc, acc);
  if (v < nv) mm_rows<A, VB, 1>(M, K, a, ars, aks, b + v * N, ldb, c + v * N, ldc, acc);
}

// One out-of-line product per (A, VB), compiled for its vector width.
template <class A, int VB>
struct Gemm {
  static void mm(int M, int nv, int K, const A* a, int64_t ars, int64_t aks, const A* b, int64_t ldb, A* c,
                 int64_t ldc, bool acc) {
    mm_impl<A, VB>(M, nv, K, a, ars, aks, b, ldb, c, ldc, acc);
  }
};
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PE_ST_AVX2 1
#define PE_ST_TARGET __attribute__((target("avx2,fma")))
template <class A>
struct Gemm<A, 32> {
  PE_ST_TARGET static void mm(int M, int nv, int K, const A* a, int64_t ars, int64_t aks, const A* b, int64_t ldb,
                              A* c, int64_t ldc, bool acc) {
    mm_impl<A, 32>(M, nv, K, a, ars, aks, b, ldb, c, ldc, acc);
  }
};

// float with AVX2 + FMA, written with intrinsics: the broadcasts of A are vbroadcastss loads from
// memory (load ports only), where the vector-extension form above costs a shuffle uop each, on a
// pipe shared with the FMAs.
template <int RB, int NV>
PE_ST_TARGET PE_VEC void mm_block_avx2(int K, const float* a, int64_t ars, int64_t aks, const float* b, int64_t ldb,
                                       float* c, int64_t ldc, bool acc) {
  __m256 sum[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) sum[r][v] = acc ? _mm256_loadu_ps(c + r * ldc + v * 8) : _mm256_setzero_ps();
  for (int k = 0; k < K; ++k) {
    __m256 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(b + k * ldb + v * 8);
    for (int r = 0; r < RB; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * ars + k * aks);
      for (int v = 0; v < NV; ++v) sum[r][v] = _mm256_fmadd_ps(av, bv[v], sum[r][v]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(c + r * ldc + v * 8, sum[r][v]);
}

template <int NV>
PE_ST_TARGET PE_VEC void mm_rows_avx2(int M, int K, const float* a, int64_t ars, int64_t aks, const float* b,
                                      int64_t ldb, float* c, int64_t ldc, bool acc) {
  constexpr int RB = 6;
  int r = 0;
  for (; r + RB <= M; r += RB) mm_block_avx2<RB, NV>(K, a + r * ars, ars, aks, b, ldb, c + r * ldc, ldc, acc);
  a += r * ars;
  c += r * ldc;
  switch (M - r) {
    case 5: mm_block_avx2<5, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    case 4: mm_block_avx2<4, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    case 3: mm_block_avx2<3, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    case 2: mm_block_avx2<2, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    case 1: mm_block_avx2<1, NV>(K, a, ars, aks, b, ldb, c, ldc, acc); break;
    default: break;
  }
}

template <>
struct Gemm<float, 32> {
  PE_ST_TARGET static void mm(int M, int nv, int K, const float* a, int64_t ars, int64_t aks, const float* b,
                              int64_t ldb, float* c, int64_t ldc, bool acc) {
    int v = 0;
    for (; v + 2 <= nv; v += 2) mm_rows_avx2<2>(M, K, a, ars, aks, b + v * 8, ldb, c + v * 8, ldc, acc);
    if (v < nv) mm_rows_avx2<1>(M, K, a, ars, aks, b + v * 8, ldb, c + v * 8, ldc, acc);
  }
};

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          !(std::getenv("PYENGINE_NO_AVX2") && std::getenv("PYENGINE_NO_AVX2")[0] == '1');
  return has;
}
#else
#define PE_ST_TARGET
bool cpu_has_avx2() { return false; }
#endif

// ---------------------------------------------------------------------------------------------
// The shared state of one call.

template <class S, class A>
struct Ctx {
  StDims d;
  const StFwdArgs<S, A>* f = nullptr;  // forward
  const StBwdArgs<S, A>* g = nullptr;  // backward
  int64_t L, Lk, nseq;                 // Lq, keys per sequence, sequences
  int D, Dp, C;
  StStrides so, sl;         // contiguous [B, T, H, W, C] and [B, T, H, W, heads]
  const A* delta = nullptr;  // tiled backward: Delta per row and head, indexed like lse
  Ctx(const StDims& d_) : d(d_) {
    L = st_len(d);
    Lk = st_key_len(d);
    nseq = st_num_seqs(d);
    D = d.D;
    Dp = round_up(d.D);
    C = d.heads * d.D;
    so = st_contiguous(d, C);
    sl = st_contiguous(d, d.heads);
  }
};

// Buffer of n zeroed values.
template <class T>
struct Buf {
  std::vector<T> v;
  explicit Buf(size_t n) : v(n + kPad, T(0)) {}
  T* operator()() { return v.data(); }
};

template <class S, class A, int VB>
struct Kern {
  using X = Vm<A, VB>;
  using V = typename X::V;
  static constexpr int N = X::N;

  static PE_VEC void mm(int M, int nv, int K, const A* a, int64_t ars, int64_t aks, const A* b, int64_t ldb, A* c,
                        int64_t ldc, bool acc) {
    Gemm<A, VB>::mm(M, nv, K, a, ars, aks, b, ldb, c, ldc, acc);
  }

  // Rows i < n of nh heads (D channels each) from src: element (i, h, c) at src[off[i] + (h D + c) sc],
  // plus pos[i D + c] (pos null: nothing), times scale, into dst[h hs + i ld + c]. Channels-last rows
  // (sc = 1) are read row by row, one run of nh D values each; otherwise channel by channel, so that
  // [B, C, T, H, W] views are read along their pixels.
  template <class Src>
  static PE_VEC void load_rows(const Src* src, const int64_t* off, int64_t sc, int n, int nh, int D, const A* pos,
                               A scale, A* dst, int64_t hs, int64_t ld) {
    if (sc == 1) {
      for (int i = 0; i < n; ++i) {
        const Src* row = src + off[i];
        const A* p = pos ? pos + static_cast<int64_t>(i) * D : nullptr;
        for (int h = 0; h < nh; ++h) {
          const Src* r = row + static_cast<int64_t>(h) * D;
          A* o = dst + h * hs + i * ld;
          if (p) {
            for (int c = 0; c < D; ++c) o[c] = (load_as_acc<A>(r[c]) + p[c]) * scale;
          } else {
            for (int c = 0; c < D; ++c) o[c] = load_as_acc<A>(r[c]) * scale;
          }
        }
      }
      return;
    }
    for (int h = 0; h < nh; ++h) {
      for (int c = 0; c < D; ++c) {
        const Src* col = src + (static_cast<int64_t>(h) * D + c) * sc;
        A* o = dst + h * hs + c;
        for (int i = 0; i < n; ++i) {
          const A p = pos ? pos[static_cast<int64_t>(i) * D + c] : A(0);
          o[i * ld] = (load_as_acc<A>(col[off[i]]) + p) * scale;
        }
      }
    }
  }

  // dst[off[i] + c sc] = src[i ld + c] * (row_scale ? row_scale[i] : scale), rows i < n, c < D.
  static PE_VEC void store_rows(S* dst, const int64_t* off, int64_t sc, int n, int D, const A* src, int64_t ld,
                                const A* row_scale, A scale) {
    for (int i = 0; i < n; ++i) {
      const A f = row_scale ? row_scale[i] : scale;
      S* o = dst + off[i];
      const A* r = src + i * ld;
      if (sc == 1) {
        for (int c = 0; c < D; ++c) store_from(o + c, r[c] * f);
      } else {
        for (int c = 0; c < D; ++c) store_from(o + c * sc, r[c] * f);
      }
    }
  }

  // Scores of nq rows and nk keys (row stride lds): plus the bias rows (stride ldb), and -inf in
  // the padded columns [nk, nkp).
  static PE_VEC void finish_scores(A* s, int64_t lds, int nq, int nk, int nkp, const A* bias, int64_t ldb) {
    if (bias)
      for (int i = 0; i < nq; ++i)
        for (int j = 0; j < nk; ++j) s[i * lds + j] += bias[i * ldb + j];
    if (nk < nkp)
      for (int i = 0; i < nq; ++i)
        for (int j = nk; j < nkp; ++j) s[i * lds + j] = st_neg_inf<A>();
  }

  // The forward's softmax over one key tile (nv vectors per row): scores become exp(s - offset)
  // in place, m and l are updated (st_online_max) and alpha[i] gets the factor of the row's
  // earlier accumulation.
  static PE_VEC void softmax_tile(A* s, int64_t lds, int nq, int nv, A* m, A* l, A* alpha) {
    for (int i = 0; i < nq; ++i) {
      A* row = s + i * lds;
      V mx = X::splat(st_neg_inf<A>());
      for (int v = 0; v < nv; ++v) mx = X::vmax(mx, X::load(row + v * N));
      A rescale;
      const A off = st_online_max(m[i], X::hmax(mx), rescale);
      V sum = X::splat(A(0));
      for (int v = 0; v < nv; ++v) {
        const V e = X::exp(X::load(row + v * N) - off);
        X::store(row + v * N, e);
        sum += e;
      }
      l[i] = l[i] * rescale + X::hsum(sum);
      alpha[i] = rescale;
    }
  }

  // The backward's probabilities: P = exp(s - lse_i) in place (st_prob).
  static PE_VEC void probs(A* s, int64_t lds, int nq, int nv, const A* lse) {
    for (int i = 0; i < nq; ++i) {
      A* row = s + i * lds;
      const A off = st_prob_offset(lse[i]);
      for (int v = 0; v < nv; ++v) X::store(row + v * N, X::exp(X::load(row + v * N) - off));
    }
  }

  // dot[i] = sum_j p[i, j] q[i, j] over nv vectors per row.
  static PE_VEC void row_dots(const A* p, const A* q, int64_t ld, int n, int nv, A* dot) {
    for (int i = 0; i < n; ++i) {
      V acc = X::splat(A(0));
      for (int v = 0; v < nv; ++v) acc += X::load(p + i * ld + v * N) * X::load(q + i * ld + v * N);
      dot[i] = X::hsum(acc);
    }
  }

  // dP becomes dS = P (dP - Delta_i + g_lse_i) (st_dscore).
  static PE_VEC void dscores(const A* p, A* dp, int64_t lds, int nq, int nv, const A* delta, const A* glse) {
    for (int i = 0; i < nq; ++i) {
      const V dl = X::splat(delta[i]), gl = X::splat(glse[i]);
      for (int v = 0; v < nv; ++v) {
        const int64_t o = i * lds + v * N;
        X::store(dp + o, X::load(p + o) * ((X::load(dp + o) - dl) + gl));
      }
    }
  }

  // r[i][l] <-> r[l][i]: an 8 x 8 block of floats transposed in registers (24 shuffles).
  static PE_VEC void transpose8(V* r) {
    V t[8], u[8];
    for (int i = 0; i < 4; ++i) {  // pairs of rows interleaved
      t[2 * i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
      t[2 * i + 1] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 2; ++i)  // quads of rows
      for (int j = 0; j < 2; ++j) {
        u[4 * i + 2 * j] = __builtin_shufflevector(t[4 * i + j], t[4 * i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[4 * i + 2 * j + 1] = __builtin_shufflevector(t[4 * i + j], t[4 * i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
      }
    for (int i = 0; i < 4; ++i) {  // the two 4-row halves
      r[i] = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
      r[i + 4] = __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
  }

  // Whether 8 x 8 blocks of A can be transposed in registers: float with 8-float vectors.
  static constexpr bool kTranspose8 = std::is_same_v<A, float> && N == 8;

  // dst[c ldd + i] = src[i lds + c] for rows i < n and columns c < m, both multiples of kPad:
  // 8 x 8 blocks in registers (transpose8) where possible, else one value at a time.
  static PE_VEC void transpose(const A* src, int64_t lds, int n, int m, A* dst, int64_t ldd) {
    if constexpr (kTranspose8) {
      for (int i0 = 0; i0 < n; i0 += 8)
        for (int c0 = 0; c0 < m; c0 += 8) {
          V r[8];
          for (int i = 0; i < 8; ++i) r[i] = X::load(src + (i0 + i) * lds + c0);
          transpose8(r);
          for (int i = 0; i < 8; ++i) X::store(dst + (c0 + i) * ldd + i0, r[i]);
        }
    } else {
      for (int i0 = 0; i0 < n; i0 += kPad)
        for (int c = 0; c < m; ++c)
          for (int i = i0; i < i0 + kPad; ++i) dst[c * ldd + i] = src[i * lds + c];
    }
  }

  static PE_VEC void scale_rows(A* o, int64_t ld, int n, int nv, const A* alpha) {
    for (int i = 0; i < n; ++i) {
      if (alpha[i] == A(1)) continue;
      const V f = X::splat(alpha[i]);
      for (int v = 0; v < nv; ++v) X::store(o + i * ld + v * N, X::load(o + i * ld + v * N) * f);
    }
  }

  // ===========================================================================================
  // Short path: temporal attention with T <= kShortL. An item is a block of up to kPixelBlock
  // pixels of one image row (consecutive w). Channels-last q: pixel by pixel, all heads at once
  // (each row of q, k, v one run of C values). Otherwise (e.g. [B, C, T, H, W] views, whose
  // pixels are contiguous per channel): head by head, the block's pixels at once, so that each
  // (channel, frame) run of the block's pixels is read (and, for gradients, written) once.

  // Offsets of frames 0 .. T - 1 of pixel seq (temporal): one offset, then steps of the frame stride.
  static PE_VEC void rows_of(const StDims& d, const StStrides& s, int64_t seq, int T, int64_t* off) {
    const int64_t base = st_row_offset(d, s, seq, 0);
    for (int t = 0; t < T; ++t) off[t] = base + t * s.t;
  }

  // Prefetch of the next pixel's rows while this one computes: a pixel's T rows lie a frame apart
  // (H W C values), too many streams at once for the hardware prefetchers, so without it the row
  // loads wait on memory. Channels [c0, c0 + n) of each row at base + off + t step; a tensor that is
  // not channels-last (sc != 1) is left to the hardware.
  template <int RW, class P>
  static PE_VEC void prefetch_rows(const P* base, int64_t off, int64_t sc, int64_t step, int T, int64_t c0, int n) {
    if (base == nullptr || sc != 1 || n <= 0) return;
    for (int t = 0; t < T; ++t) {
      const uintptr_t lo = reinterpret_cast<uintptr_t>(base + off + t * step + c0);
      const uintptr_t hi = lo + static_cast<uintptr_t>(n) * sizeof(P);
      for (uintptr_t a = lo & ~static_cast<uintptr_t>(63); a < hi; a += 64)
        __builtin_prefetch(reinterpret_cast<const void*>(a), RW, 1);
    }
  }

  // Head h of np pixels of a block: element (pixel j, frame t, channel c) at src[base + j sw + t st
  // + (h D + c) sc], plus pos[t D + c], times scale, into dst[j bs + t Dp + c]. Read along the
  // pixels (contiguous in [B, C, T, H, W] views): float blocks of 8 pixels x 8 channels are
  // transposed in registers, anything else goes one value at a time.
  template <class Src>
  static PE_VEC void load_block(const Src* src, int64_t base, const StStrides& s, int np, int T, int h, int D,
                                const A* pos, A scale, A* dst, int64_t bs, int Dp) {
    if constexpr (kTranspose8 && std::is_same_v<Src, float>) {
      if (np % 8 == 0 && s.w == 1 && D % 8 == 0) {
        for (int t = 0; t < T; ++t)
          for (int c0 = 0; c0 < D; c0 += 8) {
            const Src* r0 = src + base + t * s.t + (static_cast<int64_t>(h) * D + c0) * s.c;
            const V p = pos ? X::load(pos + static_cast<int64_t>(t) * D + c0) : X::splat(A(0));
            for (int j0 = 0; j0 < np; j0 += 8) {
              V r[8];
              for (int i = 0; i < 8; ++i) r[i] = X::load(r0 + i * s.c + j0);
              transpose8(r);
              A* o = dst + j0 * bs + static_cast<int64_t>(t) * Dp + c0;
              for (int j = 0; j < 8; ++j) X::store(o + j * bs, (r[j] + p) * scale);
            }
          }
        return;
      }
    }
    for (int c = 0; c < D; ++c)
      for (int t = 0; t < T; ++t) {
        const Src* r = src + base + t * s.t + (static_cast<int64_t>(h) * D + c) * s.c;
        const A p = pos ? pos[static_cast<int64_t>(t) * D + c] : A(0);
        A* o = dst + static_cast<int64_t>(t) * Dp + c;
        for (int j = 0; j < np; ++j) o[j * bs] = (load_as_acc<A>(r[j * s.w]) + p) * scale;
      }
  }

  // The reverse: dst[base + j sw + t st + (h D + c) sc] = src[j bs + t Dp + c] * scale.
  static PE_VEC void store_block(S* dst, int64_t base, const StStrides& s, int np, int T, int h, int D, const A* src,
                                 int64_t bs, int Dp, A scale) {
    if constexpr (kTranspose8 && std::is_same_v<S, float>) {
      if (np % 8 == 0 && s.w == 1 && D % 8 == 0) {
        for (int t = 0; t < T; ++t)
          for (int c0 = 0; c0 < D; c0 += 8) {
            S* r0 = dst + base + t * s.t + (static_cast<int64_t>(h) * D + c0) * s.c;
            for (int j0 = 0; j0 < np; j0 += 8) {
              V r[8];
              const A* o = src + j0 * bs + static_cast<int64_t>(t) * Dp + c0;
              for (int j = 0; j < 8; ++j) r[j] = X::load(o + j * bs);
              transpose8(r);
              for (int i = 0; i < 8; ++i) X::store(r0 + i * s.c + j0, r[i] * scale);
            }
          }
        return;
      }
    }
    for (int c = 0; c < D; ++c)
      for (int t = 0; t < T; ++t) {
        S* r = dst + base + t * s.t + (static_cast<int64_t>(h) * D + c) * s.c;
        const A* o = src + static_cast<int64_t>(t) * Dp + c;
        for (int j = 0; j < np; ++j) store_from(r + j * s.w, o[j * bs] * scale);
      }
  }

  // Scratch of one head of one pixel (forward and backward): keys / values transposed [Dp, Tp],
  // scores / probabilities and dP / dS [T, Tp], and rows.
  struct ShortScratch {
    int T, Tp;
    Buf<A> kt, vt, s, dp, row;
    ShortScratch(const Ctx<S, A>& x)
        : T(static_cast<int>(x.d.T)), Tp(round_up(T)), kt(static_cast<size_t>(x.Dp) * Tp),
          vt(static_cast<size_t>(x.Dp) * Tp), s(static_cast<size_t>(T) * Tp), dp(static_cast<size_t>(T) * Tp),
          row(4 * static_cast<size_t>(T)) {}
  };

  // Forward of one head of one pixel: q (scaled, with pos), k (with pos), v rows [Tp, Dp] (rows
  // T .. Tp - 1 zero), bias [T, T] or null -> o [T, Dp] unnormalised, inv[t] = 1 / l_t, lse[t].
  static PE_VEC void head_fwd(const Ctx<S, A>& x, ShortScratch& w, const A* q, const A* k, const A* v,
                              const A* bias, A* o, A* inv, A* lse) {
    const int T = w.T, Tp = w.Tp, D = x.D, Dp = x.Dp;
    A *m = w.row(), *l = m + T, *alpha = l + T;
    transpose(k, Dp, Tp, Dp, w.kt(), Tp);
    mm(T, Tp / N, D, q, Dp, 1, w.kt(), Tp, w.s(), Tp, false);
    finish_scores(w.s(), Tp, T, T, Tp, bias, T);
    for (int t = 0; t < T; ++t) {
      m[t] = st_neg_inf<A>();
      l[t] = A(0);
    }
    softmax_tile(w.s(), Tp, T, Tp / N, m, l, alpha);
    mm(T, Dp / N, T, w.s(), Tp, 1, v, Dp, o, Dp, false);
    for (int t = 0; t < T; ++t) {
      inv[t] = st_inv_sum(l[t]);
      lse[t] = st_lse(m[t], l[t]);
    }
  }

  // Backward of one head of one pixel: q (scaled), k, v, g_out rows [Tp, Dp], lse / g_lse [T],
  // bias [T, T] or null; writes dv, dk and dq / scale [T, Dp] (each where not null) and adds dS to
  // dbias [T, T] (where not null). Delta_i = sum_j P_ij dP_ij: out is not needed.
  static PE_VEC void head_bwd(const Ctx<S, A>& x, ShortScratch& w, const A* q, const A* k, const A* v, const A* go,
                              const A* lse, const A* glse, const A* bias, A* dq, A* dk, A* dv, A* dbias) {
    const int T = w.T, Tp = w.Tp, D = x.D, Dp = x.Dp;
    transpose(k, Dp, Tp, Dp, w.kt(), Tp);
    mm(T, Tp / N, D, q, Dp, 1, w.kt(), Tp, w.s(), Tp, false);
    finish_scores(w.s(), Tp, T, T, Tp, bias, T);
    probs(w.s(), Tp, T, Tp / N, lse);
    if (dv) mm(T, Dp / N, T, w.s(), 1, Tp, go, Dp, dv, Dp, false);  // dv_j = sum_i P_ij g_i: A = P^T
    if (!dq && !dk && !dbias) return;
    transpose(v, Dp, Tp, Dp, w.vt(), Tp);
    mm(T, Tp / N, D, go, Dp, 1, w.vt(), Tp, w.dp(), Tp, false);
    A* delta = w.row();
    row_dots(w.s(), w.dp(), Tp, T, Tp / N, delta);
    dscores(w.s(), w.dp(), Tp, T, Tp / N, delta, glse);
    if (dk) mm(T, Dp / N, T, w.dp(), 1, Tp, q, Dp, dk, Dp, false);  // dk_j = sum_i dS_ij q_i (q scaled)
    if (dq) mm(T, Dp / N, T, w.dp(), Tp, 1, k, Dp, dq, Dp, false);  // dq_i / scale = sum_j dS_ij k_j
    if (dbias)
      for (int i = 0; i < T; ++i)
        for (int j = 0; j < T; ++j) dbias[i * T + j] += w.dp()[i * Tp + j];
  }

  // Values per pixel of a block buffer: one more cache line than [Tp, Dp], so that the pixels'
  // slots do not all map to the same L1 set.
  static PE_VEC int64_t block_stride(int Tp, int Dp) { return static_cast<int64_t>(Tp) * Dp + 64 / sizeof(A); }

  // Workspace of the short path: rows of q, k, v (and g_out, dq, dk, dv in the backward) for all
  // heads of one pixel ([heads, Tp, Dp]) or for one head of a block's pixels ([kPixelBlock, Tp, Dp]).
  struct ShortWork {
    ShortScratch sc;
    int64_t per;  // values per buffer
    Buf<A> q, k, v, go, dq, dk, dv, o, rows;
    Buf<int64_t> off;
    ShortWork(const Ctx<S, A>& x, bool backward)
        : sc(x), per(std::max(static_cast<int64_t>(x.d.heads) * sc.Tp * x.Dp, kPixelBlock * block_stride(sc.Tp, x.Dp))),
          q(per), k(per), v(per),
          go(backward ? per : 0), dq(backward ? per : 0), dk(backward ? per : 0), dv(backward ? per : 0),
          o(backward ? 0 : static_cast<size_t>(sc.T) * x.Dp),
          rows(4 * static_cast<size_t>(std::max(x.d.heads, kPixelBlock)) * sc.T), off(10 * static_cast<size_t>(sc.T)) {}
  };

  // Forward of pixel seq, all heads (channels-last); next: the pixel to prefetch (or -1).
  static PE_VEC void pixel_fwd(const Ctx<S, A>& x, ShortWork& w, int64_t seq, int64_t next) {
    const StDims& d = x.d;
    const StFwdArgs<S, A>& a = *x.f;
    const int T = w.sc.T, Tp = w.sc.Tp, D = x.D, Dp = x.Dp, nh = d.heads;
    const auto row0 = [&](const StStrides& s) { return next < 0 ? 0 : st_row_offset(d, s, next, 0); };
    const int64_t nq0 = row0(a.sq), nk0 = row0(a.sk), nv0 = row0(a.sv), no0 = row0(x.so);
    int64_t *oq = w.off(), *ok = oq + T, *ov = ok + T, *oo = ov + T, *ol = oo + T;
    rows_of(d, a.sq, seq, T, oq);
    rows_of(d, a.sk, seq, T, ok);
    rows_of(d, a.sv, seq, T, ov);
    rows_of(d, x.so, seq, T, oo);
    rows_of(d, x.sl, seq, T, ol);
    const int64_t hq = static_cast<int64_t>(Tp) * Dp;
    load_rows(a.q, oq, a.sq.c, T, nh, D, a.pos, a.scale, w.q(), hq, Dp);
    load_rows(a.k, ok, a.sk.c, T, nh, D, a.pos, A(1), w.k(), hq, Dp);
    load_rows(a.v, ov, a.sv.c, T, nh, D, nullptr, A(1), w.v(), hq, Dp);
    A *inv = w.rows(), *lse = inv + T;
    for (int h = 0; h < nh; ++h) {
      if (next >= 0) {
        const int64_t c0 = static_cast<int64_t>(h) * D;
        prefetch_rows<0>(a.q, nq0, a.sq.c, a.sq.t, T, c0, D);
        prefetch_rows<0>(a.k, nk0, a.sk.c, a.sk.t, T, c0, D);
        prefetch_rows<0>(a.v, nv0, a.sv.c, a.sv.t, T, c0, D);
        prefetch_rows<1>(a.out, no0, 1, x.so.t, T, c0, D);
      }
      const A* bias = a.bias ? a.bias + static_cast<int64_t>(st_bias_head(d, h)) * T * T : nullptr;
      head_fwd(x, w.sc, w.q() + h * hq, w.k() + h * hq, w.v() + h * hq, bias, w.o(), inv, lse);
      for (int t = 0; t < T; ++t) a.lse[ol[t] + h] = lse[t];
      store_rows(a.out + static_cast<int64_t>(h) * D, oo, 1, T, D, w.o(), Dp, inv, A(1));
    }
  }

  // Forward of the np pixels from seq0 (one image row), head by head.
  static PE_VEC void block_fwd(const Ctx<S, A>& x, ShortWork& w, int64_t seq0, int np) {
    const StDims& d = x.d;
    const StFwdArgs<S, A>& a = *x.f;
    const int T = w.sc.T, Tp = w.sc.Tp, D = x.D, Dp = x.Dp;
    const int64_t bs = block_stride(Tp, Dp);
    const int64_t bq = st_row_offset(d, a.sq, seq0, 0), bk = st_row_offset(d, a.sk, seq0, 0),
                  bv = st_row_offset(d, a.sv, seq0, 0);
    int64_t *oo = w.off(), *ol = oo + T;
    A *inv = w.rows(), *lse = inv + T;
    for (int h = 0; h < d.heads; ++h) {
      load_block(a.q, bq, a.sq, np, T, h, D, a.pos, a.scale, w.q(), bs, Dp);
      load_block(a.k, bk, a.sk, np, T, h, D, a.pos, A(1), w.k(), bs, Dp);
      load_block(a.v, bv, a.sv, np, T, h, D, nullptr, A(1), w.v(), bs, Dp);
      const A* bias = a.bias ? a.bias + static_cast<int64_t>(st_bias_head(d, h)) * T * T : nullptr;
      for (int j = 0; j < np; ++j) {
        head_fwd(x, w.sc, w.q() + j * bs, w.k() + j * bs, w.v() + j * bs, bias, w.o(), inv, lse);
        rows_of(d, x.so, seq0 + j, T, oo);
        rows_of(d, x.sl, seq0 + j, T, ol);
        for (int t = 0; t < T; ++t) a.lse[ol[t] + h] = lse[t];
        store_rows(a.out + static_cast<int64_t>(h) * D, oo, 1, T, D, w.o(), Dp, inv, A(1));
      }
    }
  }

  // lse and g_lse of head h of pixel seq's T rows.
  static PE_VEC void pixel_lse(const Ctx<S, A>& x, int64_t seq, int h, int T, int64_t* ol, A* lse, A* glse) {
    rows_of(x.d, x.sl, seq, T, ol);
    for (int t = 0; t < T; ++t) {
      lse[t] = x.g->lse[ol[t] + h];
      glse[t] = x.g->g_lse[ol[t] + h];
    }
  }

  // Backward of pixel seq, all heads (channels-last); dbias_acc: this chunk's partial [Hb, T, T].
  static PE_VEC void pixel_bwd(const Ctx<S, A>& x, ShortWork& w, int64_t seq, int64_t next, A* dbias_acc) {
    const StDims& d = x.d;
    const StBwdArgs<S, A>& a = *x.g;
    const int T = w.sc.T, Tp = w.sc.Tp, D = x.D, Dp = x.Dp, nh = d.heads;
    // the next pixel's rows: q, k, v, g_out read, dq, dk, dv written
    const StStrides* nstr[7] = {&a.sq, &a.sk, &a.sv, &a.sg, &a.sdq, &a.sdk, &a.sdv};
    int64_t n0[7] = {};
    if (next >= 0)
      for (int i = 0; i < 7; ++i) n0[i] = st_row_offset(d, *nstr[i], next, 0);
    const bool need_ds = a.dq || a.dk || dbias_acc;
    int64_t *oq = w.off(), *ok = oq + T, *ov = ok + T, *og = ov + T, *odq = og + T, *odk = odq + T, *odv = odk + T,
            *ol = odv + T;
    rows_of(d, a.sq, seq, T, oq);
    rows_of(d, a.sk, seq, T, ok);
    rows_of(d, a.sv, seq, T, ov);
    rows_of(d, a.sg, seq, T, og);
    if (a.dq) rows_of(d, a.sdq, seq, T, odq);
    if (a.dk) rows_of(d, a.sdk, seq, T, odk);
    if (a.dv) rows_of(d, a.sdv, seq, T, odv);
    const int64_t hq = static_cast<int64_t>(Tp) * Dp;
    load_rows(a.q, oq, a.sq.c, T, nh, D, a.pos, a.scale, w.q(), hq, Dp);
    load_rows(a.k, ok, a.sk.c, T, nh, D, a.pos, A(1), w.k(), hq, Dp);
    if (need_ds) load_rows(a.v, ov, a.sv.c, T, nh, D, nullptr, A(1), w.v(), hq, Dp);
    load_rows(a.g_out, og, a.sg.c, T, nh, D, nullptr, A(1), w.go(), hq, Dp);
    A *lse = w.rows(), *glse = lse + T;
    for (int h = 0; h < nh; ++h) {
      if (next >= 0) {
        const int64_t c0 = static_cast<int64_t>(h) * D;
        prefetch_rows<0>(a.q, n0[0], a.sq.c, a.sq.t, T, c0, D);
        prefetch_rows<0>(a.k, n0[1], a.sk.c, a.sk.t, T, c0, D);
        prefetch_rows<0>(a.v, n0[2], a.sv.c, a.sv.t, T, c0, D);
        prefetch_rows<0>(a.g_out, n0[3], a.sg.c, a.sg.t, T, c0, D);
        prefetch_rows<1>(a.dq, n0[4], a.sdq.c, a.sdq.t, T, c0, D);
        prefetch_rows<1>(a.dk, n0[5], a.sdk.c, a.sdk.t, T, c0, D);
        prefetch_rows<1>(a.dv, n0[6], a.sdv.c, a.sdv.t, T, c0, D);
      }
      pixel_lse(x, seq, h, T, ol, lse, glse);
      const int hb = st_bias_head(d, h);
      const A* bias = a.bias ? a.bias + static_cast<int64_t>(hb) * T * T : nullptr;
      head_bwd(x, w.sc, w.q() + h * hq, w.k() + h * hq, w.v() + h * hq, w.go() + h * hq, lse, glse, bias,
               a.dq ? w.dq() : nullptr, a.dk ? w.dk() : nullptr, a.dv ? w.dv() : nullptr,
               dbias_acc ? dbias_acc + static_cast<int64_t>(hb) * T * T : nullptr);
      if (a.dv) store_rows(a.dv + h * D * a.sdv.c, odv, a.sdv.c, T, D, w.dv(), Dp, nullptr, A(1));
      if (a.dk) store_rows(a.dk + h * D * a.sdk.c, odk, a.sdk.c, T, D, w.dk(), Dp, nullptr, A(1));
      if (a.dq) store_rows(a.dq + h * D * a.sdq.c, odq, a.sdq.c, T, D, w.dq(), Dp, nullptr, a.scale);
    }
  }

  // Backward of the np pixels from seq0 (one image row), head by head.
  static PE_VEC void block_bwd(const Ctx<S, A>& x, ShortWork& w, int64_t seq0, int np, A* dbias_acc) {
    const StDims& d = x.d;
    const StBwdArgs<S, A>& a = *x.g;
    const int T = w.sc.T, Tp = w.sc.Tp, D = x.D, Dp = x.Dp;
    const int64_t bs = block_stride(Tp, Dp);
    const bool need_ds = a.dq || a.dk || dbias_acc;
    const auto base = [&](const StStrides& s) { return st_row_offset(d, s, seq0, 0); };
    int64_t* ol = w.off();
    A *lse = w.rows(), *glse = lse + T;
    for (int h = 0; h < d.heads; ++h) {
      load_block(a.q, base(a.sq), a.sq, np, T, h, D, a.pos, a.scale, w.q(), bs, Dp);
      load_block(a.k, base(a.sk), a.sk, np, T, h, D, a.pos, A(1), w.k(), bs, Dp);
      if (need_ds) load_block(a.v, base(a.sv), a.sv, np, T, h, D, nullptr, A(1), w.v(), bs, Dp);
      load_block(a.g_out, base(a.sg), a.sg, np, T, h, D, nullptr, A(1), w.go(), bs, Dp);
      const int hb = st_bias_head(d, h);
      const A* bias = a.bias ? a.bias + static_cast<int64_t>(hb) * T * T : nullptr;
      for (int j = 0; j < np; ++j) {
        pixel_lse(x, seq0 + j, h, T, ol, lse, glse);
        head_bwd(x, w.sc, w.q() + j * bs, w.k() + j * bs, w.v() + j * bs, w.go() + j * bs, lse, glse, bias,
                 a.dq ? w.dq() + j * bs : nullptr, a.dk ? w.dk() + j * bs : nullptr,
                 a.dv ? w.dv() + j * bs : nullptr, dbias_acc ? dbias_acc + static_cast<int64_t>(hb) * T * T : nullptr);
      }
      if (a.dv) store_block(a.dv, base(a.sdv), a.sdv, np, T, h, D, w.dv(), bs, Dp, A(1));
      if (a.dk) store_block(a.dk, base(a.sdk), a.sdk, np, T, h, D, w.dk(), bs, Dp, A(1));
      if (a.dq) store_block(a.dq, base(a.sdq), a.sdq, np, T, h, D, w.dq(), bs, Dp, a.scale);
    }
  }

  // ===========================================================================================
  // Tiled path: items (sequence, head, query block), key tiles with an online softmax.

  // Key rows [j0, j0 + nk) of source src of sequence seq: offsets into a tensor with strides s.
  static PE_VEC void key_offsets(const Ctx<S, A>& x, const StStrides& s, const int32_t* kv, int64_t seq, int src,
                                 int64_t j0, int nk, int64_t* off) {
    for (int j = 0; j < nk; ++j) off[j] = st_key_offset(x.d, s, kv, seq, src * x.L + j0 + j);
  }

  // One tile of keys: rows kr[j Dp + c] for j < nk (zeros in rows nk .. nkp - 1) and, when kt is not
  // null, transposed into kt[c ldt + j].
  template <class Src>
  static PE_VEC void load_keys(const Src* src, const int64_t* off, int64_t sc, int nk, int nkp, int D, int Dp,
                               const A* pos, A* kr, A* kt, int64_t ldt) {
    load_rows(src, off, sc, nk, 1, D, pos, A(1), kr, 0, Dp);
    if (nk < nkp) std::fill(kr + static_cast<int64_t>(nk) * Dp, kr + static_cast<int64_t>(nkp) * Dp, A(0));
    if (kt) transpose(kr, Dp, nkp, Dp, kt, ldt);
  }

  struct TiledFwd {
    Buf<A> q, kr, kt, v, s, o, row;
    Buf<int64_t> off;
    TiledFwd(const Ctx<S, A>& x)
        : q(static_cast<size_t>(kBQ) * x.Dp), kr(static_cast<size_t>(kBK) * x.Dp), kt(static_cast<size_t>(x.Dp) * kBK),
          v(static_cast<size_t>(kBK) * x.Dp),
          s(static_cast<size_t>(kBQ) * kBK), o(static_cast<size_t>(kBQ) * x.Dp), row(4 * kBQ),
          off(3 * kBQ + 4 * kBK) {}
  };

  // Key tile `tile` of sequence seq (tiles of kBK keys within each source frame, sources in
  // order): sets src, j0 and nk, and the row offsets in k and v; with `prefetch`, also asks for
  // the rows' head-h channels (channels-last tensors only), a tile ahead of their use.
  static PE_VEC void key_tile(const Ctx<S, A>& x, const StStrides& sk, const StStrides& sv, const S* k, const S* v,
                              int64_t seq, int64_t tile, bool prefetch, int& src, int64_t& j0, int& nk, int64_t* ok,
                              int64_t* ov) {
    const int64_t per = (x.L + kBK - 1) / kBK;
    src = static_cast<int>(tile / per);
    j0 = (tile % per) * kBK;
    nk = static_cast<int>(std::min<int64_t>(kBK, x.L - j0));
    const int32_t* kv = x.f ? x.f->kv_frames : x.g->kv_frames;
    key_offsets(x, sk, kv, seq, src, j0, nk, ok);
    key_offsets(x, sv, kv, seq, src, j0, nk, ov);
    if (prefetch) {
      prefetch_tile(k, ok, sk.c, nk, x.D);
      prefetch_tile(v, ov, sv.c, nk, x.D);
    }
  }

  // Prefetch of D values at src + off[i], i < n, when they are contiguous (sc = 1).
  template <class P>
  static PE_VEC void prefetch_tile(const P* src, const int64_t* off, int64_t sc, int n, int D) {
    if (sc != 1) return;
    for (int i = 0; i < n; ++i) {
      const uintptr_t lo = reinterpret_cast<uintptr_t>(src + off[i]);
      const uintptr_t hi = lo + static_cast<uintptr_t>(D) * sizeof(P);
      for (uintptr_t p = lo & ~static_cast<uintptr_t>(63); p < hi; p += 64)
        __builtin_prefetch(reinterpret_cast<const void*>(p), 0, 1);
    }
  }

  static PE_VEC void tiled_fwd(const Ctx<S, A>& x, TiledFwd& w, int64_t seq, int h, int64_t qb) {
    const StDims& d = x.d;
    const StFwdArgs<S, A>& a = *x.f;
    const int D = x.D, Dp = x.Dp;
    const int64_t L = x.L, i0 = qb * kBQ;
    const int nq = static_cast<int>(std::min<int64_t>(kBQ, L - i0));
    // key / value row offsets of two tiles: the one in use and the next (prefetched)
    int64_t *oq = w.off(), *oo = oq + kBQ, *ol = oo + kBQ, *okv = ol + kBQ;
    for (int i = 0; i < nq; ++i) {
      oq[i] = st_row_offset(d, a.sq, seq, i0 + i);
      oo[i] = st_row_offset(d, x.so, seq, i0 + i);
      ol[i] = st_row_offset(d, x.sl, seq, i0 + i);
    }
    const int64_t ch = static_cast<int64_t>(h) * D;
    load_rows(a.q + ch * a.sq.c, oq, a.sq.c, nq, 1, D, a.pos ? a.pos + i0 * D : nullptr, a.scale, w.q(), 0, Dp);
    A *m = w.row(), *l = m + kBQ, *alpha = l + kBQ, *inv = alpha + kBQ;
    for (int i = 0; i < nq; ++i) {
      m[i] = st_neg_inf<A>();
      l[i] = A(0);
    }
    const A* bias = a.bias ? a.bias + (static_cast<int64_t>(st_bias_head(d, h)) * L + i0) * x.Lk : nullptr;
    bool first = true;
    const int64_t ntiles = d.n_src * ((L + kBK - 1) / kBK);
    int src = 0, nk = 0, src_next = 0, nk_next = 0;
    int64_t j0 = 0, j0_next = 0;
    if (ntiles > 0) key_tile(x, a.sk, a.sv, a.k + ch, a.v + ch, seq, 0, false, src, j0, nk, okv, okv + kBK);
    for (int64_t tile = 0; tile < ntiles; ++tile) {
      int64_t *ok = okv + (tile & 1) * 2 * kBK, *ov = ok + kBK;
      if (tile + 1 < ntiles) {
        int64_t* next = okv + ((tile + 1) & 1) * 2 * kBK;
        key_tile(x, a.sk, a.sv, a.k + ch, a.v + ch, seq, tile + 1, true, src_next, j0_next, nk_next, next,
                 next + kBK);
      }
      const int nkp = round_up(nk);
      const A* kpos = a.pos ? a.pos + j0 * D : nullptr;
      load_keys(a.k + ch * a.sk.c, ok, a.sk.c, nk, nkp, D, Dp, kpos, w.kr(), w.kt(), kBK);
      load_rows(a.v + ch * a.sv.c, ov, a.sv.c, nk, 1, D, nullptr, A(1), w.v(), 0, Dp);
      mm(nq, nkp / N, D, w.q(), Dp, 1, w.kt(), kBK, w.s(), kBK, false);
      finish_scores(w.s(), kBK, nq, nk, nkp, bias ? bias + src * L + j0 : nullptr, x.Lk);
      softmax_tile(w.s(), kBK, nq, nkp / N, m, l, alpha);
      if (!first) scale_rows(w.o(), Dp, nq, Dp / N, alpha);
      mm(nq, Dp / N, nk, w.s(), kBK, 1, w.v(), Dp, w.o(), Dp, !first);
      first = false;
      src = src_next;
      j0 = j0_next;
      nk = nk_next;
    }
    if (first) std::fill(w.o(), w.o() + static_cast<int64_t>(nq) * Dp, A(0));  // no keys at all
    for (int i = 0; i < nq; ++i) {
      inv[i] = st_inv_sum(l[i]);
      a.lse[ol[i] + h] = st_lse(m[i], l[i]);
    }
    store_rows(a.out + ch, oo, 1, nq, D, w.o(), Dp, inv, A(1));
  }

  struct TiledBwd {
    Buf<A> qs, go, kt, vt, kr, vr, s, dp, acc, acc2, rows;
    Buf<int64_t> off;
    TiledBwd(const Ctx<S, A>& x)
        : qs(static_cast<size_t>(kMaxRows) * x.Dp), go(static_cast<size_t>(kMaxRows) * x.Dp),
          kt(static_cast<size_t>(x.Dp) * kMaxRows), vt(static_cast<size_t>(x.Dp) * kMaxRows),
          kr(static_cast<size_t>(kMaxRows) * x.Dp), vr(static_cast<size_t>(kMaxRows) * x.Dp),
          s(static_cast<size_t>(kMaxTile)), dp(static_cast<size_t>(kMaxTile)),
          acc(static_cast<size_t>(kMaxRows) * x.Dp), acc2(static_cast<size_t>(kMaxRows) * x.Dp), rows(3 * kMaxRows),
          off(8 * kMaxRows) {}
  };

  // The query rows [i0, i0 + nq) of sequence seq, head h: qs (scaled, with pos), g_out, and per row
  // delta (precomputed, x.delta), lse, g_lse.
  static PE_VEC void tiled_queries(const Ctx<S, A>& x, TiledBwd& w, int64_t seq, int h, int64_t i0, int nq) {
    const StDims& d = x.d;
    const StBwdArgs<S, A>& a = *x.g;
    const int D = x.D, Dp = x.Dp;
    int64_t *oq = w.off() + 6 * kMaxRows, *og = oq + kMaxRows;
    for (int i = 0; i < nq; ++i) {
      oq[i] = st_row_offset(d, a.sq, seq, i0 + i);
      og[i] = st_row_offset(d, a.sg, seq, i0 + i);
    }
    const int64_t ch = static_cast<int64_t>(h) * D;
    load_rows(a.q + ch * a.sq.c, oq, a.sq.c, nq, 1, D, a.pos ? a.pos + i0 * D : nullptr, a.scale, w.qs(), 0, Dp);
    load_rows(a.g_out + ch * a.sg.c, og, a.sg.c, nq, 1, D, nullptr, A(1), w.go(), 0, Dp);
    A *delta = w.rows(), *lse = delta + kMaxRows, *glse = lse + kMaxRows;
    for (int i = 0; i < nq; ++i) {
      const int64_t r = st_row_offset(d, x.sl, seq, i0 + i) + h;
      delta[i] = x.delta ? x.delta[r] : A(0);
      lse[i] = a.lse[r];
      glse[i] = a.g_lse[r];
    }
  }

  // Scores and probabilities of the loaded queries against the loaded key tile (w.kt, row stride
  // ldk, also that of w.s and w.dp), and, with need_ds, dS in w.dp (needs w.vt).
  static PE_VEC void tiled_probs(const Ctx<S, A>& x, TiledBwd& w, int nq, int nk, int nkp, int ldk, const A* bias,
                                 bool need_ds) {
    const A *delta = w.rows(), *lse = delta + kMaxRows, *glse = lse + kMaxRows;
    mm(nq, nkp / N, x.D, w.qs(), x.Dp, 1, w.kt(), ldk, w.s(), ldk, false);
    finish_scores(w.s(), ldk, nq, nk, nkp, bias, x.Lk);
    probs(w.s(), ldk, nq, nkp / N, lse);
    if (!need_ds) return;
    mm(nq, nkp / N, x.D, w.go(), x.Dp, 1, w.vt(), ldk, w.dp(), ldk, false);
    dscores(w.s(), w.dp(), ldk, nq, nkp / N, delta, glse);
  }

  // Pass K: dk, dv of keys [j0, j0 + nk), j0 = kb kKeyBlock, of key sequence ks (temporal: a pixel;
  // spatial: frame f = ks mod T of batch ks / T), head h, from every (query sequence, source) that
  // reads them, in order of query frame, then source, then query block (of kKeyQ rows).
  static PE_VEC void tiled_bwd_keys(const Ctx<S, A>& x, TiledBwd& w, int64_t ks, int h, int64_t kb) {
    const StDims& d = x.d;
    const StBwdArgs<S, A>& a = *x.g;
    const int D = x.D, Dp = x.Dp;
    const int64_t L = x.L, j0 = kb * kKeyBlock;
    const int nk = static_cast<int>(std::min<int64_t>(kKeyBlock, L - j0)), nkp = round_up(nk);
    int64_t *ok = w.off(), *ov = ok + kMaxRows, *odk = ov + kMaxRows, *odv = odk + kMaxRows;
    // the key rows in k, v, dk, dv: pixel ks's frames, or frame ks mod T's pixels
    const auto key_row = [&](const StStrides& s, int64_t j) {
      const int64_t b = ks / d.T, f = ks - b * d.T;
      return d.temporal ? st_row_offset(d, s, ks, j) : st_frame_offset(d, s, b, f, j);
    };
    for (int j = 0; j < nk; ++j) {
      ok[j] = key_row(a.sk, j0 + j);
      ov[j] = key_row(a.sv, j0 + j);
      if (a.dk) odk[j] = key_row(a.sdk, j0 + j);
      if (a.dv) odv[j] = key_row(a.sdv, j0 + j);
    }
    const int64_t ch = static_cast<int64_t>(h) * D;
    const bool need_ds = a.dk != nullptr;
    load_keys(a.k + ch * a.sk.c, ok, a.sk.c, nk, nkp, D, Dp, a.pos ? a.pos + j0 * D : nullptr, w.kr(), w.kt(),
              kKeyBlock);
    if (need_ds) load_keys(a.v + ch * a.sv.c, ov, a.sv.c, nk, nkp, D, Dp, nullptr, w.vr(), w.vt(), kKeyBlock);
    A *dk = w.acc(), *dv = w.acc2();
    std::fill(dk, dk + static_cast<int64_t>(nk) * Dp, A(0));
    std::fill(dv, dv + static_cast<int64_t>(nk) * Dp, A(0));
    const int64_t nt = d.temporal ? 1 : d.T;
    const int n_src = d.temporal ? 1 : d.n_src;
    for (int64_t t = 0; t < nt; ++t)
      for (int src = 0; src < n_src; ++src) {
        int64_t qseq = ks;
        if (!d.temporal) {
          const int64_t b = ks / d.T, f = ks - b * d.T;
          if (a.kv_frames[t * n_src + src] != f) continue;
          qseq = b * d.T + t;
        }
        const A* bias = a.bias ? a.bias + static_cast<int64_t>(st_bias_head(d, h)) * L * x.Lk + src * L + j0 : nullptr;
        for (int64_t i0 = 0; i0 < L; i0 += kKeyQ) {
          const int nq = static_cast<int>(std::min<int64_t>(kKeyQ, L - i0));
          tiled_queries(x, w, qseq, h, i0, nq);
          if (i0 + kKeyQ < L) {  // the next query block's rows, while this one computes
            int64_t* o = w.off() + 4 * kMaxRows;
            const int n = static_cast<int>(std::min<int64_t>(kKeyQ, L - i0 - kKeyQ));
            for (int i = 0; i < n; ++i) o[i] = st_row_offset(d, a.sq, qseq, i0 + kKeyQ + i);
            prefetch_tile(a.q + ch, o, a.sq.c, n, D);
            for (int i = 0; i < n; ++i) o[i] = st_row_offset(d, a.sg, qseq, i0 + kKeyQ + i);
            prefetch_tile(a.g_out + ch, o, a.sg.c, n, D);
          }
          tiled_probs(x, w, nq, nk, nkp, kKeyBlock, bias ? bias + i0 * x.Lk : nullptr, need_ds);
          if (a.dv) mm(nk, Dp / N, nq, w.s(), 1, kKeyBlock, w.go(), Dp, dv, Dp, true);
          if (a.dk) mm(nk, Dp / N, nq, w.dp(), 1, kKeyBlock, w.qs(), Dp, dk, Dp, true);
        }
      }
    if (a.dk) store_rows(a.dk + ch * a.sdk.c, odk, a.sdk.c, nk, D, dk, Dp, nullptr, A(1));
    if (a.dv) store_rows(a.dv + ch * a.sdv.c, odv, a.sdv.c, nk, D, dv, Dp, nullptr, A(1));
  }

  // Pass Q: dq of query block qb (kBQ rows) of sequence seq, head h, over every key tile (kBK);
  // dbias (or null): add dS into its rows (the caller owns them for the whole pass).
  static PE_VEC void tiled_bwd_queries(const Ctx<S, A>& x, TiledBwd& w, int64_t seq, int h, int64_t qb, A* dbias) {
    const StDims& d = x.d;
    const StBwdArgs<S, A>& a = *x.g;
    const int D = x.D, Dp = x.Dp;
    const int64_t L = x.L, i0 = qb * kBQ;
    const int nq = static_cast<int>(std::min<int64_t>(kBQ, L - i0));
    tiled_queries(x, w, seq, h, i0, nq);
    // key / value row offsets of two tiles: the one in use and the next (prefetched)
    int64_t *okv = w.off(), *odq = okv + 4 * kMaxRows;
    const int64_t ch = static_cast<int64_t>(h) * D;
    A* dq = w.acc();
    std::fill(dq, dq + static_cast<int64_t>(nq) * Dp, A(0));
    const int64_t brow = (static_cast<int64_t>(st_bias_head(d, h)) * L + i0) * x.Lk;
    const int64_t ntiles = d.n_src * ((L + kBK - 1) / kBK);
    int src = 0, nk = 0, src_next = 0, nk_next = 0;
    int64_t j0 = 0, j0_next = 0;
    if (ntiles > 0) key_tile(x, a.sk, a.sv, a.k + ch, a.v + ch, seq, 0, false, src, j0, nk, okv, okv + kBK);
    for (int64_t tile = 0; tile < ntiles; ++tile) {
      int64_t *ok = okv + (tile & 1) * 2 * kBK, *ov = ok + kBK;
      if (tile + 1 < ntiles) {
        int64_t* next = okv + ((tile + 1) & 1) * 2 * kBK;
        key_tile(x, a.sk, a.sv, a.k + ch, a.v + ch, seq, tile + 1, true, src_next, j0_next, nk_next, next,
                 next + kBK);
      }
      const int nkp = round_up(nk);
      const A* kpos = a.pos ? a.pos + j0 * D : nullptr;
      load_keys(a.k + ch * a.sk.c, ok, a.sk.c, nk, nkp, D, Dp, kpos, w.kr(), w.kt(), kBK);
      load_keys(a.v + ch * a.sv.c, ov, a.sv.c, nk, nkp, D, Dp, nullptr, w.vr(), w.vt(), kBK);
      tiled_probs(x, w, nq, nk, nkp, kBK, a.bias ? a.bias + brow + src * L + j0 : nullptr, true);
      if (a.dq) mm(nq, Dp / N, nk, w.dp(), kBK, 1, w.kr(), Dp, dq, Dp, true);
      if (dbias) {
        A* db = dbias + brow + src * L + j0;
        for (int i = 0; i < nq; ++i)
          for (int j = 0; j < nk; ++j) db[i * x.Lk + j] += w.dp()[i * kBK + j];
      }
      src = src_next;
      j0 = j0_next;
      nk = nk_next;
    }
    if (a.dq) {
      for (int i = 0; i < nq; ++i) odq[i] = st_row_offset(d, a.sdq, seq, i0 + i);
      store_rows(a.dq + ch * a.sdq.c, odq, a.sdq.c, nq, D, dq, Dp, nullptr, a.scale);
    }
  }

  // Delta of every row and head of sequence seq, rows [i0, i1): delta[lse index] = <g_out, out>.
  static PE_VEC void tiled_deltas(const Ctx<S, A>& x, int64_t seq, int64_t i0, int64_t i1, A* delta) {
    const StDims& d = x.d;
    const StBwdArgs<S, A>& a = *x.g;
    for (int64_t i = i0; i < i1; ++i) {
      const S *g = a.g_out + st_row_offset(d, a.sg, seq, i), *o = a.out + st_row_offset(d, a.so, seq, i);
      A* dl = delta + st_row_offset(d, x.sl, seq, i);
      for (int h = 0; h < d.heads; ++h) {
        A sum = A(0);
        for (int c = h * x.D; c < (h + 1) * x.D; ++c)
          sum += load_as_acc<A>(g[c * a.sg.c]) * load_as_acc<A>(o[c * a.so.c]);
        dl[h] = sum;
      }
    }
  }
};

// Pixel block b of the short path: blocks of kPixelBlock pixels along each image row (the last
// one of a row shorter). Sets the first pixel (sequence) and returns the block's pixel count.
inline int pixel_block(const StDims& d, int64_t b, int64_t& seq0) {
  const int64_t per_row = (d.W + kPixelBlock - 1) / kPixelBlock, row = b / per_row,
                w0 = (b - row * per_row) * kPixelBlock;
  seq0 = row * d.W + w0;
  return static_cast<int>(std::min<int64_t>(kPixelBlock, d.W - w0));
}

inline int64_t pixel_blocks(const StDims& d) { return d.B * d.H * ((d.W + kPixelBlock - 1) / kPixelBlock); }

// ---------------------------------------------------------------------------------------------
// Entry points over ranges of work items, one set per vector width; the 32-byte set carries the
// AVX2 target attribute.

#define PE_ST_ENTRIES(ATTR)                                                                              \
  using Kn = Kern<S, A, VB>;                                                                             \
  ATTR static void short_fwd(const Ctx<S, A>& x, typename Kn::ShortWork& w, int64_t b0, int64_t b1, bool blocked) { \
    for (int64_t b = b0; b < b1; ++b) {                                                                  \
      int64_t seq0;                                                                                      \
      const int np = pixel_block(x.d, b, seq0);                                                          \
      if (blocked) {                                                                                     \
        Kn::block_fwd(x, w, seq0, np);                                                                   \
        continue;                                                                                        \
      }                                                                                                  \
      for (int64_t p = seq0; p < seq0 + np; ++p) Kn::pixel_fwd(x, w, p, p + 1 < x.nseq ? p + 1 : -1);    \
    }                                                                                                    \
  }                                                                                                      \
  ATTR static void short_bwd(const Ctx<S, A>& x, typename Kn::ShortWork& w, int64_t b0, int64_t b1, bool blocked, \
                             A* dbias_acc) {                                                             \
    for (int64_t b = b0; b < b1; ++b) {                                                                  \
      int64_t seq0;                                                                                      \
      const int np = pixel_block(x.d, b, seq0);                                                          \
      if (blocked) {                                                                                     \
        Kn::block_bwd(x, w, seq0, np, dbias_acc);                                                        \
        continue;                                                                                        \
      }                                                                                                  \
      for (int64_t p = seq0; p < seq0 + np; ++p)                                                         \
        Kn::pixel_bwd(x, w, p, p + 1 < x.nseq ? p + 1 : -1, dbias_acc);                                  \
    }                                                                                                    \
  }                                                                                                      \
  ATTR static void tiled_fwd(const Ctx<S, A>& x, typename Kn::TiledFwd& w, int64_t seq, int h,           \
                             int64_t qb) {                                                               \
    Kn::tiled_fwd(x, w, seq, h, qb);                                                                     \
  }                                                                                                      \
  ATTR static void tiled_bwd_keys(const Ctx<S, A>& x, typename Kn::TiledBwd& w, int64_t ks, int h,       \
                                  int64_t kb) {                                                          \
    Kn::tiled_bwd_keys(x, w, ks, h, kb);                                                                 \
  }                                                                                                      \
  ATTR static void tiled_bwd_queries(const Ctx<S, A>& x, typename Kn::TiledBwd& w, int64_t seq, int h,   \
                                     int64_t qb, A* dbias) {                                             \
    Kn::tiled_bwd_queries(x, w, seq, h, qb, dbias);                                                      \
  }

template <class S, class A, int VB>
struct Entry {
  PE_ST_ENTRIES()
};
#ifdef PE_ST_AVX2
template <class S, class A>
struct Entry<S, A, 32> {
  static constexpr int VB = 32;
  PE_ST_ENTRIES(PE_ST_TARGET)
};
#endif
#undef PE_ST_ENTRIES

// ---------------------------------------------------------------------------------------------
// The OpenMP loops.

template <class S, class A>
bool short_path(const Ctx<S, A>& x) {
  return x.d.temporal && x.d.T <= kShortL;
}

template <class S, class A, int VB>
void run_fwd(const Ctx<S, A>& x) {
  using E = Entry<S, A, VB>;
  using Kn = Kern<S, A, VB>;
  if (short_path(x)) {
    const int64_t n = pixel_blocks(x.d);
    const bool blocked = x.f->sq.c != 1;  // q not channels-last: the block's pixels head by head
#pragma omp parallel
    {
      typename Kn::ShortWork w(x, false);
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < n; ++b) E::short_fwd(x, w, b, b + 1, blocked);
    }
    return;
  }
  const int64_t nqb = (x.L + kBQ - 1) / kBQ, heads = x.d.heads, n = x.nseq * heads * nqb;
#pragma omp parallel
  {
    typename Kn::TiledFwd w(x);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < n; ++it) {
      const int64_t qb = it % nqb, sh = it / nqb;
      E::tiled_fwd(x, w, sh / heads, static_cast<int>(sh % heads), qb);
    }
  }
}

template <class S, class A, int VB>
void run_bwd(const Ctx<S, A>& x) {
  using E = Entry<S, A, VB>;
  using Kn = Kern<S, A, VB>;
  const StBwdArgs<S, A>& a = *x.g;
  const int64_t heads = x.d.heads;
  const bool need_bias = a.dbias != nullptr;
  if (short_path(x)) {
    const int64_t n = pixel_blocks(x.d);
    const bool blocked = a.sq.c != 1;
    if (!need_bias) {
#pragma omp parallel
      {
        typename Kn::ShortWork w(x, true);
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < n; ++b) E::short_bwd(x, w, b, b + 1, blocked, nullptr);
      }
      return;
    }
    // dbias: chunk c of a fixed partition of the pixel blocks sums into partial c; then the
    // partials are added in chunk order
    const int64_t nchunk = std::min(n, kBiasChunks), per = static_cast<int64_t>(x.d.bias_heads) * x.L * x.L;
    std::vector<A> partial(static_cast<size_t>(nchunk * per), A(0));
#pragma omp parallel
    {
      typename Kn::ShortWork w(x, true);
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = 0; c < nchunk; ++c)
        E::short_bwd(x, w, n * c / nchunk, n * (c + 1) / nchunk, blocked, partial.data() + c * per);
#pragma omp for schedule(static)
      for (int64_t e = 0; e < per; ++e) {
        A sum = A(0);
        for (int64_t c = 0; c < nchunk; ++c) sum += partial[c * per + e];
        a.dbias[e] = sum;
      }
    }
    return;
  }
  // Delta_i = <g_out_i, out_i> of every row and head, once (both passes read it many times)
  std::vector<A> delta;
  if (a.dq || a.dk || need_bias) {
    delta.resize(static_cast<size_t>(x.nseq * x.L * heads));
    const int64_t rows = 64, nb = (x.L + rows - 1) / rows, n = x.nseq * nb;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t it = 0; it < n; ++it) {
      const int64_t seq = it / nb, i0 = (it % nb) * rows;
      Kn::tiled_deltas(x, seq, i0, std::min(x.L, i0 + rows), delta.data());
    }
  }
  Ctx<S, A> xd = x;
  xd.delta = delta.empty() ? nullptr : delta.data();
  if (a.dk || a.dv) {
    // pass K: key sequences are pixels (temporal) or frames (spatial), as many as the sequences
    const int64_t nkb = (x.L + kKeyBlock - 1) / kKeyBlock, n = x.nseq * heads * nkb;
#pragma omp parallel
    {
      typename Kn::TiledBwd w(xd);
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < n; ++it) {
        const int64_t kb = it % nkb, sh = it / nkb;
        E::tiled_bwd_keys(xd, w, sh / heads, static_cast<int>(sh % heads), kb);
      }
    }
  }
  const int64_t nqb = (x.L + kBQ - 1) / kBQ;
  if (!a.dq && !need_bias) return;
  if (!need_bias) {
    const int64_t n = x.nseq * heads * nqb;
#pragma omp parallel
    {
      typename Kn::TiledBwd w(xd);
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < n; ++it) {
        const int64_t qb = it % nqb, sh = it / nqb;
        E::tiled_bwd_queries(xd, w, sh / heads, static_cast<int>(sh % heads), qb, nullptr);
      }
    }
    return;
  }
  // dbias: item (bias head, query block) owns those dbias rows; sequences and heads in order
  const int64_t nb = x.d.bias_heads, n = nb * nqb;
#pragma omp parallel
  {
    typename Kn::TiledBwd w(xd);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < n; ++it) {
      const int64_t qb = it % nqb, hb = it / nqb;
      for (int64_t seq = 0; seq < x.nseq; ++seq)
        for (int h = 0; h < heads; ++h)
          if (st_bias_head(x.d, h) == hb) E::tiled_bwd_queries(xd, w, seq, h, qb, a.dbias);
    }
  }
}

}  // namespace

template <typename S, typename A>
void st_attention_fwd(const StDims& d, const StFwdArgs<S, A>& a) {
  Ctx<S, A> x(d);
  x.f = &a;
  if (x.nseq == 0 || x.L == 0 || d.heads == 0) return;
#ifdef PE_ST_AVX2
  if (cpu_has_avx2()) return run_fwd<S, A, 32>(x);
#endif
  run_fwd<S, A, 16>(x);
}

template <typename S, typename A>
void st_attention_bwd(const StDims& d, const StBwdArgs<S, A>& a) {
  Ctx<S, A> x(d);
  x.g = &a;
  if (x.nseq == 0 || x.L == 0 || d.heads == 0) {
    if (a.dbias) std::fill(a.dbias, a.dbias + static_cast<int64_t>(d.bias_heads) * x.L * x.Lk, A(0));
    return;
  }
  if (!a.dq && !a.dk && !a.dv && !a.dbias) return;
#ifdef PE_ST_AVX2
  if (cpu_has_avx2()) return run_bwd<S, A, 32>(x);
#endif
  run_bwd<S, A, 16>(x);
}

#define PE_ST_INSTANTIATE(S, A)                                              \
  template void st_attention_fwd<S, A>(const StDims&, const StFwdArgs<S, A>&); \
  template void st_attention_bwd<S, A>(const StDims&, const StBwdArgs<S, A>&);
PE_ST_INSTANTIATE(float, float)
PE_ST_INSTANTIATE(double, double)
PE_ST_INSTANTIATE(F16Storage, float)
PE_ST_INSTANTIATE(BF16Storage, float)
#undef PE_ST_INSTANTIATE

}  // namespace cpu
}  // namespace pe
