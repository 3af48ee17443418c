// Factorized spatiotemporal attention (st_attention): the indexing and per-element maths shared by
// the CPU kernel and a CUDA kernel. Semantics: pyengine/reference/st_attention.py.
//
// Tensors are [B, T, H, W, C] with C = heads * D, read through their strides (elements): q, k, v
// and the backward's g_out / out may be channels-last contiguous or permuted views of contiguous
// [B, C, T, H, W] tensors (then the channel stride is T H W and the pixel stride 1). The forward's
// outputs are contiguous, out [B, T, H, W, C] and lse [B, T, H, W, heads]; dq, dk, dv have the
// strides of q, k, v where those are dense (torch.empty_like), else they are contiguous.
//
// Sequences and positions:
//   temporal: sequence seq = (b H + h) W + w (one per pixel), position i = frame t, Lq = Lk = T.
//   spatial:  sequence seq = b T + t (one per frame), position i = h W + w, Lq = H W; key position
//             j = src Lq + p is pixel p of frame kv_frames[t, src] (Lk = n_src Lq).
// For head h, channels h D .. h D + D - 1, and query row i of a sequence:
//   q_i = scale (q[i] + pos[i]),  k_j = k[j] + pos[j mod Lq]       (scale folded into the query)
//   s_ij = <q_i, k_j> + bias[h or 0, i, j]
//   out_i = sum_j P_ij v_j,  P_ij = exp(s_ij - lse_i),  lse_i = log sum_j exp(s_ij)
// computed in A = float (float16 / bfloat16 / float32 inputs) or double (float64 inputs). The sum
// runs over key tiles with an online softmax (running max m_i and sum l_i, see st_online_max).
// A row whose scores are all -inf has l_i = 0: out_i = 0 and lse_i = -inf.
//
// Backward (FlashAttention-2): P_ij is recomputed from lse_i, Delta_i = <g_out_i, out_i>
// (= sum_j P_ij dP_ij, which a kernel holding whole rows may use instead of reading out) and
//   dS_ij = P_ij (dP_ij - Delta_i + g_lse_i),  dP_ij = <g_out_i, v_j>
//   dq_i = scale sum_j dS_ij k_j,  dk_j = sum_i dS_ij q_i (q_i scaled as above),
//   dv_j = sum_i P_ij g_out_i,     dbias[h or 0, i, j] = sum over sequences (and heads) of dS_ij.
#pragma once

#include <cmath>
#include <cstdint>

#include "pyengine/common.h"

namespace pe {

// The largest head dimension D.
constexpr int kStMaxHeadDim = 256;

// Sizes of one call.
struct StDims {
  int64_t B, T, H, W;
  int heads, D;    // C = heads * D
  bool temporal;
  int n_src;       // spatial: key frames per query frame (kv_frames is [T, n_src]); temporal: 1
  int bias_heads;  // Hb: 1 or heads, 0 without a bias
  bool has_pos;
};

// Strides in elements of a [B, T, H, W, C] tensor.
struct StStrides {
  int64_t b, t, h, w, c;
};

// The strides of a contiguous [B, T, H, W, C] tensor (out, dq, dk, dv with C = heads D; lse with
// C = heads).
PE_HD StStrides st_contiguous(const StDims& d, int64_t C) {
  return {d.T * d.H * d.W * C, d.H * d.W * C, d.W * C, C, 1};
}

// Positions per sequence (Lq), keys per sequence (Lk) and the number of sequences.
PE_HD int64_t st_len(const StDims& d) { return d.temporal ? d.T : d.H * d.W; }
PE_HD int64_t st_key_len(const StDims& d) { return d.temporal ? d.T : d.n_src * d.H * d.W; }
PE_HD int64_t st_num_seqs(const StDims& d) { return d.temporal ? d.B * d.H * d.W : d.B * d.T; }

// Offset of channel 0 of element (b, t, h, w).
PE_HD int64_t st_offset(const StStrides& s, int64_t b, int64_t t, int64_t h, int64_t w) {
  return b * s.b + t * s.t + h * s.h + w * s.w;
}

// Offset of channel 0 of position i of sequence seq, in the sequence's own frame(s): the query
// row (and, in temporal mode, the key row) i.
PE_HD int64_t st_row_offset(const StDims& d, const StStrides& s, int64_t seq, int64_t i) {
  if (d.temporal) {
    const int64_t hw = d.H * d.W, b = seq / hw, p = seq - b * hw;
    return st_offset(s, b, i, p / d.W, p % d.W);
  }
  const int64_t b = seq / d.T, t = seq - b * d.T;
  return st_offset(s, b, t, i / d.W, i % d.W);
}

// Offset of channel 0 of pixel p of frame f of batch b (spatial mode: key frames).
PE_HD int64_t st_frame_offset(const StDims& d, const StStrides& s, int64_t b, int64_t f, int64_t p) {
  return st_offset(s, b, f, p / d.W, p % d.W);
}

// Offset of channel 0 of key position j of sequence seq. kv_frames: int32 [T, n_src] (spatial).
PE_HD int64_t st_key_offset(const StDims& d, const StStrides& s, const int32_t* kv_frames, int64_t seq,
                            int64_t j) {
  if (d.temporal) return st_row_offset(d, s, seq, j);
  const int64_t L = d.H * d.W, src = j / L, b = seq / d.T, t = seq - b * d.T;
  return st_frame_offset(d, s, b, kv_frames[t * d.n_src + src], j - src * L);
}

// The bias head of attention head h (bias [Hb, Lq, Lk]).
PE_HD int st_bias_head(const StDims& d, int h) { return d.bias_heads == 1 ? 0 : h; }

// The score of one (i, j): qs = scale (q_i + pos_i), k = k_j + pos_j, both D values.
template <typename A>
PE_HD A st_score(const A* qs, const A* k, int D, A bias) {
  A s = A(0);
  for (int c = 0; c < D; ++c) s = pe_fma(qs[c], k[c], s);
  return s + bias;
}

template <typename A>
PE_HD A st_neg_inf() {
  return static_cast<A>(-INFINITY);
}

// Online softmax, one key tile of a row: the running max m becomes max(m, tile_max). Returns the
// exponent offset for the tile's probabilities exp(s - offset) (0 while the row has seen only -inf
// scores, so that exp(-inf - offset) = 0 instead of NaN) and sets `rescale`, the factor of the
// running sum l and output accumulator (0 when nothing was accumulated yet).
template <typename A>
PE_HD A st_online_max(A& m, A tile_max, A& rescale) {
  const A m_new = m > tile_max ? m : tile_max;
  const A off = m_new == st_neg_inf<A>() ? A(0) : m_new;
  rescale = m == st_neg_inf<A>() ? A(0) : pe_exp(m - off);
  m = m_new;
  return off;
}

PE_HD float st_log(float a) {
#if defined(__CUDA_ARCH__)
  return logf(a);
#else
  return std::log(a);
#endif
}
PE_HD double st_log(double a) {
#if defined(__CUDA_ARCH__)
  return ::log(a);
#else
  return std::log(a);
#endif
}

// lse of a finished row from its running max m and sum l (-inf for a fully masked row).
template <typename A>
PE_HD A st_lse(A m, A l) {
  return l > A(0) ? m + st_log(l) : st_neg_inf<A>();
}

// The factor of the accumulated output row: 1 / l, or 0 for a fully masked row.
template <typename A>
PE_HD A st_inv_sum(A l) {
  return l > A(0) ? A(1) / l : A(0);
}

// The exponent offset of the backward's probabilities P = exp(s - offset): lse, or +inf for a
// fully masked row (lse = -inf), whose probabilities are then exp(-inf) = 0, never NaN.
template <typename A>
PE_HD A st_prob_offset(A lse) {
  return lse == st_neg_inf<A>() ? static_cast<A>(INFINITY) : lse;
}

// The probability of one (i, j) in the backward.
template <typename A>
PE_HD A st_prob(A s, A lse) {
  return pe_exp(s - st_prob_offset(lse));
}

// dS_ij from P_ij, dP_ij = <g_out_i, v_j>, Delta_i = <g_out_i, out_i> and g_lse_i.
template <typename A>
PE_HD A st_dscore(A p, A dp, A delta, A g_lse) {
  return p * (dp - delta + g_lse);
}

// Pointers of one forward call. S is the storage type of q, k, v and out (float, double, or
// F16Storage / BF16Storage), A the compute type (float, or double for double inputs).
template <typename S, typename A>
struct StFwdArgs {
  const S *q, *k, *v;        // [B, T, H, W, C], any strides
  StStrides sq, sk, sv;
  const int32_t* kv_frames;  // [T, n_src] (spatial mode)
  const A* bias;             // [Hb, Lq, Lk] contiguous, or null
  const A* pos;              // [>= Lq, D] contiguous, or null
  A scale;
  S* out;                    // [B, T, H, W, C] contiguous
  A* lse;                    // [B, T, H, W, heads] contiguous
};

// Pointers of one backward call; a null gradient is not needed.
template <typename S, typename A>
struct StBwdArgs {
  const S* g_out;  // [B, T, H, W, C], any strides
  StStrides sg;
  const A* g_lse;  // [B, T, H, W, heads] contiguous
  const S *q, *k, *v;
  StStrides sq, sk, sv;
  const int32_t* kv_frames;
  const A *bias, *pos;
  A scale;
  const S* out;    // the forward's output, any strides
  StStrides so;
  const A* lse;    // the forward's lse, contiguous
  S *dq, *dk, *dv;  // [B, T, H, W, C], written through their strides (the host allocates them like q, k, v)
  StStrides sdq, sdk, sdv;
  A* dbias;  // [Hb, Lq, Lk] contiguous
};

// ---------------------------------------------------------------------------------------------
// Launchers: raw pointers only, no torch. There is no CUDA kernel yet.

namespace cpu {
template <typename S, typename A>
void st_attention_fwd(const StDims& d, const StFwdArgs<S, A>& a);
template <typename S, typename A>
void st_attention_bwd(const StDims& d, const StBwdArgs<S, A>& a);
}  // namespace cpu

}  // namespace pe
