"""Triton backend of ``st_attention``: spatial or temporal attention read through the video layout.

The maths is the one of ``pyengine/reference/st_attention.py`` (the specification). For one
sequence, head ``h`` and query position ``i``::

    s_ij = scale <q_i + pos_i, k_j + pos_(j mod L)> + bias[h or 0, i, j]
    out_i = sum_j P_ij v_j,   P_ij = exp(s_ij - lse_i),   lse_i = log sum_j exp(s_ij)

Backward (FlashAttention-2), with ``Di = <g_out_i, out_i> - g_lse_i``::

    dP_ij = <g_out_i, v_j>,   dS_ij = P_ij (dP_ij - Di)
    dq_i = scale sum_j dS_ij (k_j + pos_j),   dk_j = scale sum_i dS_ij (q_i + pos_i)
    dv_j = sum_i P_ij g_out_i,                 dbias[h, i, j] = sum over sequences of dS_ij

Memory layout: q, k, v, g_out are ``[B, T, H, W, C]`` with any strides (channels-last, or
``[B, C, T, H, W]`` tensors seen through a permutation); every kernel gets the five strides of
each and nothing is copied. Head ``h`` owns channels ``h D .. h D + D - 1``; a ``[rows, D]`` tile
is a gather of rows of ``D`` consecutive channels (one contiguous run per row for channels-last
inputs). out, dq, dk, dv are written channels-last contiguous, lse (and the backward's ``Di``)
``[B, T, H, W, heads]`` float32. A sequence is:

* temporal: pixel ``(b, y, x)``, sequence index ``(b H + y) W + x``, positions the frames ``t``;
* spatial: frame ``(b, t)``, sequence index ``b T + t``, positions ``p = y W + x``; its keys are
  the frames ``kv_frames[t, s]`` (clamped into ``[0, T)``) one after the other, key column
  ``s L + p``.

Work split. Every grid is 1-D (axis 0 has a 2^31 - 1 range, so any number of sequences runs)
and a program id decodes as ``((group * heads) + head) * n_blocks + block``; a group is ``SEQ``
sequences (``SEQ > 1`` only in temporal mode, see below), a block a run of positions.

* forward: a program owns ``BLOCK_M`` queries of one (group, head) and walks the key blocks of
  every source frame with an online softmax (running max ``m``, sum ``l``, fp32 accumulator);
  rows whose scores are all ``-inf`` keep ``m = -inf``, are exponentiated against 0 and end
  with ``l = 0``: out 0, lse ``-inf``, no NaN anywhere.
* backward: ``_delta_kernel`` first forms ``Di`` (``BLOCK_P`` pixels per program, all heads).
  ``_dkdv_kernel``: a program owns ``BLOCK_N`` keys of one (group, head) and loops over the query
  blocks that see them, recomputing P from lse. In spatial mode it owns key frame ``f`` of clip
  ``b`` and visits every query frame ``t`` and source ``s`` with ``kv_frames[t, s] == f``, so the
  gradient of a key frame shared by several query frames is summed in one program, in a fixed
  order, without atomics. ``_dq_kernel`` is the forward's loop again, accumulating ``dS K``.
  ``_dbias_kernel``: a program owns one ``[BLOCK_M, BLOCK_N]`` tile of one bias head and a
  fixed, strided share of the sequences (and all heads when ``Hb == 1``); it recomputes dS for
  each and writes a partial sum; the partials are summed over the shares by ``torch.sum``.
  Every gradient is therefore deterministic (bit-identical from run to run).

Precision: scores, softmax and accumulators are float32. Dot operands are the input dtype:
float16/bfloat16 tiles go to the tensor cores with P and dS rounded to that dtype (as in
FlashAttention; ``q + pos`` and ``k + pos`` are formed in float32 and rounded once), float32
tiles use ``input_precision="ieee"`` (no TF32), so float32 results follow the reference to
rounding. For bfloat16 the dS operand of the dq and dk dots is split into two bfloat16 parts
(two dots, ~16 mantissa bits): dq and dk are sums of terms of both signs and one 8-bit rounding
of dS shows up amplified in them. Under the interpreter (CPU tensors) bfloat16 dots run on
float32 copies of the same bfloat16 values (the interpreter's own bfloat16 dot is wrong).
float64 is not supported here (the op routes it to the other backends).

Block sizes (``_config``; chosen by reasoning about the GPU, none of it timed on one yet):

* ``BLOCK_D`` = next power of two of D, at least 16 (the smallest ``tl.dot`` K on NVIDIA); the
  loads are masked, so D = 40, 72, 80, 160 need no padded copies; padded lanes cost compute only.
* temporal attention, ``T <= 64``: a sequence is 16 to 64 positions; the forward does 4 T^2 D
  flops per 8 T D bytes of q, k, v, out (16-bit), ~T/2 flop/byte, far below an H100's ~300
  flop/byte ridge: the pass is memory-bound and the goal is few, fat programs that stream whole
  rows. One program takes ALL the ``T`` queries and keys of a (sequence, head) (``LP`` = next
  power of two of T, at least 16) and packs ``SEQ = 64 / LP`` sequences (32 rows for D > 128)
  into one 64-row tile with a block-diagonal mask. The ``SEQ``x wasted flops (~32 flop/byte at
  T = 16) keep it memory-bound, the key loop has one step (the online softmax never rescales),
  and neighbouring sequences are neighbouring pixels: a program reads a few contiguous spans of
  channels-last memory.
* spatial attention (L = H W up to 4096, several source frames) is the classic FlashAttention
  case: forward ``BLOCK_M = 128``, ``BLOCK_N = 64`` (``32`` for D > 64), 4 warps (8 for
  D = 128); D = 256 uses ``64 x 32``. The backward keeps two ``[BLOCK_N, BLOCK_D]`` fp32
  accumulators in the dK/dV kernel, so it uses 64 keys x 64 queries (32 x 32 for D > 128) and the
  dQ kernel 64 queries x 64 keys (32 keys for D > 64). The same rules serve temporal attention
  with ``T > 64``. All blocks shrink to the sequence length (at least 16). ``num_stages`` is
  left to Triton's default.
* dbias: 16 x 16 tiles and no pipelining for D > 128 (the shared memory of four 256-wide
  tiles); one program per tile and share; the number of shares targets ~512 programs in all and
  at most 2^24 partial values, and never exceeds the number of sequences.

No autograd here: ``pyengine/ops/st_attention.py`` wires these functions into the registered op.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

__all__ = ["st_attention_bwd", "st_attention_fwd"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MIN_BLOCK = 16  # tl.dot needs M, N, K >= 16 on NVIDIA
_BLOCK_P = 64  # pixels per program of the Delta preprocess
_DBIAS_PROGRAMS = 512  # target number of dbias programs (tiles x shares)
_DBIAS_PARTIALS = 1 << 24  # at most this many float32 partial values


# ---------------------------------------------------------------------------------------------
# Addressing, shared by the kernels.


@triton.jit
def _block_rows(seq0, start, n_seq, L, SEQ: tl.constexpr, BLOCK: tl.constexpr):
    """Rows of a [BLOCK] tile: SEQ sequences seq0, seq0 + 1, ... of BLOCK // SEQ slots each,
    positions start + (row mod BLOCK // SEQ). Returns (sequence, position, valid, slot), [BLOCK]."""
    r = tl.arange(0, BLOCK)
    slot = r // (BLOCK // SEQ)
    i = start + r % (BLOCK // SEQ)
    seq = seq0 + slot
    return seq, i, (i < L) & (seq < n_seq), slot


@triton.jit
def _coords(seq, i, T, H, W, TEMPORAL: tl.constexpr):
    """(b, t, y, x) of position i of sequence seq: divided in int32 (both are below 2^31),
    returned as int64 for the offsets."""
    if TEMPORAL:
        b = seq // (H * W)
        y = (seq // W) % H
        x = seq % W
        t = i
    else:
        b = seq // T
        t = seq % T
        y = i // W
        x = i % W
    return b.to(tl.int64), t.to(tl.int64), y.to(tl.int64), x.to(tl.int64)


@triton.jit
def _rows_off(seq, i, T, H, W, s0, s1, s2, s3, TEMPORAL: tl.constexpr):
    """Element offset of (sequence, position) in a [B, T, H, W, *] tensor of strides s0..s3."""
    b, t, y, x = _coords(seq, i, T, H, W, TEMPORAL)
    return b * s0 + t * s1 + y * s2 + x * s3


@triton.jit
def _load_tile(ptr, seq, i, valid, h, D, T, H, W, s0, s1, s2, s3, s4, TEMPORAL: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """[rows, BLOCK_D] tile of head h (channels h D + d, zero beyond D and on invalid rows)."""
    d = tl.arange(0, BLOCK_D)
    rows = _rows_off(seq, i, T, H, W, s0, s1, s2, s3, TEMPORAL)
    ch = (h * D + d).to(tl.int64) * s4
    return tl.load(ptr + rows[:, None] + ch[None, :], mask=valid[:, None] & (d < D)[None, :], other=0.0)


@triton.jit
def _store_tile(ptr, val, seq, i, valid, h, D, T, H, W, s0, s1, s2, s3, s4, TEMPORAL: tl.constexpr,
                BLOCK_D: tl.constexpr):
    d = tl.arange(0, BLOCK_D)
    rows = _rows_off(seq, i, T, H, W, s0, s1, s2, s3, TEMPORAL)
    ch = (h * D + d).to(tl.int64) * s4
    tl.store(ptr + rows[:, None] + ch[None, :], val.to(ptr.dtype.element_ty),
             mask=valid[:, None] & (d < D)[None, :])


@triton.jit
def _add_pos(x, pos_ptr, i, valid, D, HAS_POS: tl.constexpr, BLOCK_D: tl.constexpr):
    """x + pos[i] (pos: [L, D] float32 contiguous), formed in float32, rounded once to x's dtype."""
    if HAS_POS:
        d = tl.arange(0, BLOCK_D)
        p = tl.load(pos_ptr + i.to(tl.int64)[:, None] * D + d[None, :], mask=valid[:, None] & (d < D)[None, :],
                    other=0.0)
        x = (x.to(tl.float32) + p).to(x.dtype)
    return x


@triton.jit
def _key_seq0(g, src, kvf_ptr, n_src, T, SEQ: tl.constexpr, TEMPORAL: tl.constexpr):
    """First key sequence of query group g's source src: the group itself (temporal), or clip
    b's frame kv_frames[t, src] clamped into [0, T) (spatial, g = b T + t)."""
    if TEMPORAL:
        return g * SEQ
    else:
        t = g % T
        f = tl.load(kvf_ptr + t * n_src + src)
        f = tl.minimum(tl.maximum(f, 0), T - 1)
        return (g - t) + f


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    """a @ b with float32 accumulation. UPCAST: operands to float32 first (bfloat16 under the
    interpreter, whose dot would multiply bfloat16 bit patterns; bfloat16 products are exact in
    float32, as on the tensor cores)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _dot_rounded(a, b, UPCAST: tl.constexpr, SPLIT: tl.constexpr):
    """a @ b for float32 a (dS) rounded to b's dtype. SPLIT (bfloat16): a as the sum of two
    bfloat16 parts, two dots: ~16 mantissa bits instead of 8, since dq and dk are sums of terms
    of both signs (sum_j dS_ij = 0) and one rounding of dS shows up amplified in them."""
    hi = a.to(b.dtype)
    acc = _dot(hi, b, UPCAST)
    if SPLIT:
        acc += _dot((a - hi.to(tl.float32)).to(b.dtype), b, UPCAST)
    return acc


@triton.jit
def _scores(qt, kt, i, j, rvalid, cvalid, rslot, cslot, bias_ptr, bias_h, Lk, col0, scale,
            HAS_BIAS: tl.constexpr, SEQ: tl.constexpr, UPCAST: tl.constexpr):
    """[BLOCK_M, BLOCK_N] float32 scores, -inf where the pair is invalid (row, column, or two
    different sequences of a packed tile)."""
    s = _dot(qt, tl.trans(kt), UPCAST) * scale
    valid = rvalid[:, None] & cvalid[None, :]
    if SEQ > 1:
        valid = valid & (rslot[:, None] == cslot[None, :])
    if HAS_BIAS:
        off = bias_h + i.to(tl.int64)[:, None] * Lk + (col0 + j).to(tl.int64)[None, :]
        s += tl.load(bias_ptr + off, mask=valid, other=0.0)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _probs(s, lse):
    """P = exp(s - lse); rows with lse = -inf have s = -inf everywhere and give 0 (no NaN)."""
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    return tl.exp(s - lse[:, None])


# ---------------------------------------------------------------------------------------------
# Forward.


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr,  # [B, T, H, W, C], any strides
    kvf_ptr,  # [T, n_src] int32 (spatial)
    bias_ptr,  # [Hb, L, Lk] float32 contiguous (HAS_BIAS)
    pos_ptr,  # [L, D] float32 contiguous (HAS_POS)
    out_ptr,  # [B, T, H, W, C]
    lse_ptr,  # [B, T, H, W, heads] float32
    sq0, sq1, sq2, sq3, sq4, sk0, sk1, sk2, sk3, sk4, sv0, sv1, sv2, sv3, sv4,
    so0, so1, so2, so3, so4, sl0, sl1, sl2, sl3, sl4,
    n_seq, T, H, W, L, n_src, heads, D, bias_hs, Lk, scale, n_qb,
    TEMPORAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr, SEQ: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    qb = pid % n_qb
    h = (pid // n_qb) % heads
    g = pid // n_qb // heads
    seq, i, rvalid, rslot = _block_rows(g * SEQ, qb * BLOCK_M, n_seq, L, SEQ, BLOCK_M)
    qt = _load_tile(q_ptr, seq, i, rvalid, h, D, T, H, W, sq0, sq1, sq2, sq3, sq4, TEMPORAL, BLOCK_D)
    qt = _add_pos(qt, pos_ptr, i, rvalid, D, HAS_POS, BLOCK_D)
    bias_h = h.to(tl.int64) * bias_hs
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for src in range(n_src):
        kseq0 = _key_seq0(g, src, kvf_ptr, n_src, T, SEQ, TEMPORAL)
        for j0 in range(0, L, BLOCK_N):
            kseq, j, cvalid, cslot = _block_rows(kseq0, j0, n_seq, L, SEQ, BLOCK_N)
            kt = _load_tile(k_ptr, kseq, j, cvalid, h, D, T, H, W, sk0, sk1, sk2, sk3, sk4, TEMPORAL, BLOCK_D)
            kt = _add_pos(kt, pos_ptr, j, cvalid, D, HAS_POS, BLOCK_D)
            s = _scores(qt, kt, i, j, rvalid, cvalid, rslot, cslot, bias_ptr, bias_h, Lk, src * L, scale,
                        HAS_BIAS, SEQ, UPCAST)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: exp(-inf) = 0
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vt = _load_tile(v_ptr, kseq, j, cvalid, h, D, T, H, W, sv0, sv1, sv2, sv3, sv4, TEMPORAL, BLOCK_D)
            acc = acc * alpha[:, None] + _dot(p.to(vt.dtype), vt, UPCAST)
            m_i = m_new
    live = l_i > 0.0
    out = acc / tl.where(live, l_i, 1.0)[:, None]
    _store_tile(out_ptr, out, seq, i, rvalid, h, D, T, H, W, so0, so1, so2, so3, so4, TEMPORAL, BLOCK_D)
    lse = tl.where(live, m_i + tl.log(tl.where(live, l_i, 1.0)), float("-inf"))
    loff = _rows_off(seq, i, T, H, W, sl0, sl1, sl2, sl3, TEMPORAL) + h.to(tl.int64) * sl4
    tl.store(lse_ptr + loff, lse, mask=rvalid)


# ---------------------------------------------------------------------------------------------
# Backward.


@triton.jit
def _delta_kernel(
    go_ptr,  # [B, T, H, W, C] upstream gradient of out, any strides
    out_ptr,  # [B, T, H, W, C] the forward's output, any strides
    glse_ptr,  # [B, T, H, W, heads] upstream gradient of lse, any strides
    delta_ptr,  # [B, T, H, W, heads] float32 contiguous: Di = <g_out_i, out_i> - g_lse_i
    sg0, sg1, sg2, sg3, sg4, so0, so1, so2, so3, so4, sl0, sl1, sl2, sl3, sl4,
    n_pix, T, H, W, heads, D,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pvalid = p < n_pix
    x = p % W
    y = (p // W) % H
    t = (p // (H * W)) % T
    b = p // (H * W) // T
    d = tl.arange(0, BLOCK_D)
    m = pvalid[:, None] & (d < D)[None, :]
    g_rows = b * sg0 + t * sg1 + y * sg2 + x * sg3
    o_rows = b * so0 + t * so1 + y * so2 + x * so3
    l_rows = b * sl0 + t * sl1 + y * sl2 + x * sl3
    for h in range(heads):
        ch = (h * D + d).to(tl.int64)
        go = tl.load(go_ptr + g_rows[:, None] + (ch * sg4)[None, :], mask=m, other=0.0).to(tl.float32)
        o = tl.load(out_ptr + o_rows[:, None] + (ch * so4)[None, :], mask=m, other=0.0).to(tl.float32)
        gl = tl.load(glse_ptr + l_rows + h * sl4, mask=pvalid, other=0.0).to(tl.float32)
        tl.store(delta_ptr + p * heads + h, tl.sum(go * o, 1) - gl, mask=pvalid)


@triton.jit
def _dkdv_queries(
    dk, dv, kt, vt, kseq, j, cvalid, cslot, qseq0, col0, h,
    q_ptr, go_ptr, lse_ptr, delta_ptr, bias_ptr, pos_ptr,
    sq0, sq1, sq2, sq3, sq4, sg0, sg1, sg2, sg3, sg4, sl0, sl1, sl2, sl3, sl4,
    n_seq, T, H, W, L, heads, D, bias_h, Lk, scale,
    TEMPORAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr, NEED_K: tl.constexpr,
    NEED_V: tl.constexpr, SEQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, SPLIT: tl.constexpr,
):
    """Adds to (dk, dv) of one key tile the terms of every query block of query sequence(s) qseq0
    (key columns col0 + j): dv += P^T g_out, dk += dS^T (q + pos) (unscaled)."""
    for i0 in range(0, L, BLOCK_M):
        seq, i, rvalid, rslot = _block_rows(qseq0, i0, n_seq, L, SEQ, BLOCK_M)
        qt = _load_tile(q_ptr, seq, i, rvalid, h, D, T, H, W, sq0, sq1, sq2, sq3, sq4, TEMPORAL, BLOCK_D)
        qt = _add_pos(qt, pos_ptr, i, rvalid, D, HAS_POS, BLOCK_D)
        go = _load_tile(go_ptr, seq, i, rvalid, h, D, T, H, W, sg0, sg1, sg2, sg3, sg4, TEMPORAL, BLOCK_D)
        loff = _rows_off(seq, i, T, H, W, sl0, sl1, sl2, sl3, TEMPORAL) + h.to(tl.int64) * sl4
        lse = tl.load(lse_ptr + loff, mask=rvalid, other=0.0)
        s = _scores(qt, kt, i, j, rvalid, cvalid, rslot, cslot, bias_ptr, bias_h, Lk, col0, scale, HAS_BIAS, SEQ,
                    UPCAST)
        p = _probs(s, lse)
        go = go.to(vt.dtype)
        if NEED_V:
            dv += _dot(tl.trans(p.to(vt.dtype)), go, UPCAST)
        if NEED_K:
            di = tl.load(delta_ptr + loff, mask=rvalid, other=0.0)
            dp = _dot(go, tl.trans(vt), UPCAST)
            ds = p * (dp - di[:, None])
            dk += _dot_rounded(tl.trans(ds), qt, UPCAST, SPLIT)
    return dk, dv


@triton.jit
def _dkdv_kernel(
    q_ptr, k_ptr, v_ptr,  # [B, T, H, W, C], any strides
    kvf_ptr,  # [T, n_src] int32 (spatial)
    bias_ptr, pos_ptr,  # as in the forward
    go_ptr,  # [B, T, H, W, C] upstream gradient of out, any strides
    lse_ptr, delta_ptr,  # [B, T, H, W, heads] float32, strides sl*
    dk_ptr, dv_ptr,  # [B, T, H, W, C] q.dtype, strides sd* (NEED_K / NEED_V)
    sq0, sq1, sq2, sq3, sq4, sk0, sk1, sk2, sk3, sk4, sv0, sv1, sv2, sv3, sv4,
    sg0, sg1, sg2, sg3, sg4, sl0, sl1, sl2, sl3, sl4, sd0, sd1, sd2, sd3, sd4,
    n_seq, T, H, W, L, n_src, heads, D, bias_hs, Lk, scale, n_kb,
    TEMPORAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr, NEED_K: tl.constexpr,
    NEED_V: tl.constexpr, SEQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, SPLIT: tl.constexpr,
):
    pid = tl.program_id(0)
    kb = pid % n_kb
    h = (pid // n_kb) % heads
    g = pid // n_kb // heads  # key group (temporal) or key frame b T + f (spatial)
    kseq, j, cvalid, cslot = _block_rows(g * SEQ, kb * BLOCK_N, n_seq, L, SEQ, BLOCK_N)
    kt = _load_tile(k_ptr, kseq, j, cvalid, h, D, T, H, W, sk0, sk1, sk2, sk3, sk4, TEMPORAL, BLOCK_D)
    kt = _add_pos(kt, pos_ptr, j, cvalid, D, HAS_POS, BLOCK_D)
    vt = _load_tile(v_ptr, kseq, j, cvalid, h, D, T, H, W, sv0, sv1, sv2, sv3, sv4, TEMPORAL, BLOCK_D)
    bias_h = h.to(tl.int64) * bias_hs
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if TEMPORAL:
        dk, dv = _dkdv_queries(
            dk, dv, kt, vt, kseq, j, cvalid, cslot, g * SEQ, 0, h,
            q_ptr, go_ptr, lse_ptr, delta_ptr, bias_ptr, pos_ptr,
            sq0, sq1, sq2, sq3, sq4, sg0, sg1, sg2, sg3, sg4, sl0, sl1, sl2, sl3, sl4,
            n_seq, T, H, W, L, heads, D, bias_h, Lk, scale,
            TEMPORAL, HAS_BIAS, HAS_POS, NEED_K, NEED_V, SEQ, BLOCK_M, BLOCK_D, UPCAST, SPLIT,
        )  # fmt: skip
    else:
        f = g % T
        clip = g - f
        # every (query frame, source) that reads key frame f, in a fixed order: no atomics
        for tq in range(T):
            for src in range(n_src):
                fr = tl.load(kvf_ptr + tq * n_src + src)
                fr = tl.minimum(tl.maximum(fr, 0), T - 1)
                if fr == f:
                    dk, dv = _dkdv_queries(
                        dk, dv, kt, vt, kseq, j, cvalid, cslot, clip + tq, src * L, h,
                        q_ptr, go_ptr, lse_ptr, delta_ptr, bias_ptr, pos_ptr,
                        sq0, sq1, sq2, sq3, sq4, sg0, sg1, sg2, sg3, sg4, sl0, sl1, sl2, sl3, sl4,
                        n_seq, T, H, W, L, heads, D, bias_h, Lk, scale,
                        TEMPORAL, HAS_BIAS, HAS_POS, NEED_K, NEED_V, SEQ, BLOCK_M, BLOCK_D, UPCAST, SPLIT,
                    )  # fmt: skip
    if NEED_K:
        _store_tile(dk_ptr, dk * scale, kseq, j, cvalid, h, D, T, H, W, sd0, sd1, sd2, sd3, sd4, TEMPORAL, BLOCK_D)
    if NEED_V:
        _store_tile(dv_ptr, dv, kseq, j, cvalid, h, D, T, H, W, sd0, sd1, sd2, sd3, sd4, TEMPORAL, BLOCK_D)


@triton.jit
def _dq_kernel(
    q_ptr, k_ptr, v_ptr, kvf_ptr, bias_ptr, pos_ptr, go_ptr, lse_ptr, delta_ptr,  # as in _dkdv_kernel
    dq_ptr,  # [B, T, H, W, C] q.dtype, strides sd*
    sq0, sq1, sq2, sq3, sq4, sk0, sk1, sk2, sk3, sk4, sv0, sv1, sv2, sv3, sv4,
    sg0, sg1, sg2, sg3, sg4, sl0, sl1, sl2, sl3, sl4, sd0, sd1, sd2, sd3, sd4,
    n_seq, T, H, W, L, n_src, heads, D, bias_hs, Lk, scale, n_qb,
    TEMPORAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr, SEQ: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    SPLIT: tl.constexpr,
):
    pid = tl.program_id(0)
    qb = pid % n_qb
    h = (pid // n_qb) % heads
    g = pid // n_qb // heads
    seq, i, rvalid, rslot = _block_rows(g * SEQ, qb * BLOCK_M, n_seq, L, SEQ, BLOCK_M)
    qt = _load_tile(q_ptr, seq, i, rvalid, h, D, T, H, W, sq0, sq1, sq2, sq3, sq4, TEMPORAL, BLOCK_D)
    qt = _add_pos(qt, pos_ptr, i, rvalid, D, HAS_POS, BLOCK_D)
    go = _load_tile(go_ptr, seq, i, rvalid, h, D, T, H, W, sg0, sg1, sg2, sg3, sg4, TEMPORAL, BLOCK_D)
    go = go.to(qt.dtype)
    loff = _rows_off(seq, i, T, H, W, sl0, sl1, sl2, sl3, TEMPORAL) + h.to(tl.int64) * sl4
    lse = tl.load(lse_ptr + loff, mask=rvalid, other=0.0)
    di = tl.load(delta_ptr + loff, mask=rvalid, other=0.0)
    bias_h = h.to(tl.int64) * bias_hs
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for src in range(n_src):
        kseq0 = _key_seq0(g, src, kvf_ptr, n_src, T, SEQ, TEMPORAL)
        for j0 in range(0, L, BLOCK_N):
            kseq, j, cvalid, cslot = _block_rows(kseq0, j0, n_seq, L, SEQ, BLOCK_N)
            kt = _load_tile(k_ptr, kseq, j, cvalid, h, D, T, H, W, sk0, sk1, sk2, sk3, sk4, TEMPORAL, BLOCK_D)
            kt = _add_pos(kt, pos_ptr, j, cvalid, D, HAS_POS, BLOCK_D)
            vt = _load_tile(v_ptr, kseq, j, cvalid, h, D, T, H, W, sv0, sv1, sv2, sv3, sv4, TEMPORAL, BLOCK_D)
            s = _scores(qt, kt, i, j, rvalid, cvalid, rslot, cslot, bias_ptr, bias_h, Lk, src * L, scale,
                        HAS_BIAS, SEQ, UPCAST)
            p = _probs(s, lse)
            dp = _dot(go, tl.trans(vt), UPCAST)
            ds = p * (dp - di[:, None])
            dq += _dot_rounded(ds, kt, UPCAST, SPLIT)
    _store_tile(dq_ptr, dq * scale, seq, i, rvalid, h, D, T, H, W, sd0, sd1, sd2, sd3, sd4, TEMPORAL, BLOCK_D)


@triton.jit
def _dbias_kernel(
    q_ptr, k_ptr, v_ptr, kvf_ptr, bias_ptr, pos_ptr, go_ptr, lse_ptr, delta_ptr,  # as in _dkdv_kernel
    part_ptr,  # [n_parts, Hb, L, Lk] float32: partial sums of dS
    sq0, sq1, sq2, sq3, sq4, sk0, sk1, sk2, sk3, sk4, sv0, sv1, sv2, sv3, sv4,
    sg0, sg1, sg2, sg3, sg4, sl0, sl1, sl2, sl3, sl4,
    n_seq, T, H, W, L, n_src, heads, D, Hb, n_h, Lk, scale, n_qb, n_kb, n_parts,
    TEMPORAL: tl.constexpr, HAS_POS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    cb = pid % (n_src * n_kb)
    qb = (pid // (n_src * n_kb)) % n_qb
    hb = (pid // (n_src * n_kb) // n_qb) % Hb
    part = pid // (n_src * n_kb) // n_qb // Hb
    src = cb // n_kb
    kb = cb % n_kb
    bias_h = hb.to(tl.int64) * L * Lk
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for n in range(part, n_seq, n_parts):
        seq, i, rvalid, rslot = _block_rows(n, qb * BLOCK_M, n_seq, L, 1, BLOCK_M)
        kseq, j, cvalid, cslot = _block_rows(_key_seq0(n, src, kvf_ptr, n_src, T, 1, TEMPORAL), kb * BLOCK_N,
                                             n_seq, L, 1, BLOCK_N)
        loff = _rows_off(seq, i, T, H, W, sl0, sl1, sl2, sl3, TEMPORAL)
        for h in range(hb, hb + n_h):
            qt = _load_tile(q_ptr, seq, i, rvalid, h, D, T, H, W, sq0, sq1, sq2, sq3, sq4, TEMPORAL, BLOCK_D)
            qt = _add_pos(qt, pos_ptr, i, rvalid, D, HAS_POS, BLOCK_D)
            go = _load_tile(go_ptr, seq, i, rvalid, h, D, T, H, W, sg0, sg1, sg2, sg3, sg4, TEMPORAL, BLOCK_D)
            kt = _load_tile(k_ptr, kseq, j, cvalid, h, D, T, H, W, sk0, sk1, sk2, sk3, sk4, TEMPORAL, BLOCK_D)
            kt = _add_pos(kt, pos_ptr, j, cvalid, D, HAS_POS, BLOCK_D)
            vt = _load_tile(v_ptr, kseq, j, cvalid, h, D, T, H, W, sv0, sv1, sv2, sv3, sv4, TEMPORAL, BLOCK_D)
            lse = tl.load(lse_ptr + loff + h * sl4, mask=rvalid, other=0.0)
            di = tl.load(delta_ptr + loff + h * sl4, mask=rvalid, other=0.0)
            s = _scores(qt, kt, i, j, rvalid, cvalid, rslot, cslot, bias_ptr, bias_h, Lk, src * L, scale,
                        True, 1, UPCAST)
            p = _probs(s, lse)
            dp = _dot(go.to(vt.dtype), tl.trans(vt), UPCAST)
            acc += p * (dp - di[:, None])
    r = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    c = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    off = ((part.to(tl.int64) * Hb + hb) * L + r[:, None]) * Lk + src * L + c[None, :]
    tl.store(part_ptr + off, acc, mask=(r < L)[:, None] & (c < L)[None, :])


# ---------------------------------------------------------------------------------------------
# Host launchers.


def _on_device(t):
    """Launch on t's GPU whatever the current device is (Triton launches on the current one)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _pow2(n: int) -> int:
    return max(_MIN_BLOCK, triton.next_power_of_2(max(int(n), 1)))


def _config(kind: str, temporal: bool, L: int, block_d: int) -> tuple[int, int, int, int]:
    """(SEQ, BLOCK_M, BLOCK_N, num_warps) of pass ``kind`` ("fwd", "dkdv", "dq", "dbias"); the
    reasons are in the module docstring. dbias never packs sequences (SEQ = 1)."""
    lp = _pow2(L)
    if temporal and L <= 64 and kind != "dbias":
        rows = 64 if block_d <= 128 else 32
        seq = max(1, rows // lp)
        return seq, seq * lp, seq * lp, 4
    if kind == "fwd":
        bm, bn = (128, 64 if block_d <= 64 else 32) if block_d <= 128 else (64, 32)
        warps = 8 if block_d == 128 else 4
    elif kind == "dkdv":
        bm, bn = (64, 64) if block_d <= 128 else (32, 32)
        warps = 4 if block_d <= 64 else 8
    elif kind == "dbias" and block_d > 128:
        # four [rows, BLOCK_D] tiles per head step; at 32 x 32 and fp32 Triton's pipelining of
        # the head loop asked for 260 KiB of shared memory on an H200 (227 KiB there): 16 x 16,
        # launched with num_stages = 1 (see the launch)
        bm, bn, warps = 16, 16, 4
    else:  # dq, dbias
        bm, bn = (64, 64 if block_d <= 64 else 32)
        warps = 4 if block_d <= 64 else 8
    return 1, min(bm, lp), min(bn, lp), warps


def _check(q, k, v, kv_frames, bias, pos, heads, temporal):
    """(B, T, H, W, C, D, L, n_src, Lk) after checking the kernel arguments."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"st_attention (triton): {name} must be a [B, T, H, W, C] tensor")
        if x.dtype not in _DTYPES:
            raise TypeError(f"st_attention (triton): {name} must be float16, bfloat16 or float32, got {x.dtype} "
                            "(float64 runs on the cpu, cuda or reference backend)")
    if not (q.shape == k.shape == v.shape) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"st_attention (triton): q, k, v must share shape and dtype, got {tuple(q.shape)} "
                         f"{q.dtype}, {tuple(k.shape)} {k.dtype}, {tuple(v.shape)} {v.dtype}")
    B, T, H, W, C = q.shape
    if not isinstance(heads, int) or heads < 1 or C % heads:
        raise ValueError(f"st_attention (triton): heads must be a positive int dividing C = {C}, got {heads!r}")
    D = C // heads
    if D > 256:
        raise ValueError(f"st_attention (triton): head dim must be at most 256, got {D}")
    L = T if temporal else H * W
    if temporal:
        n_src = 1
    else:
        if kv_frames.dtype != torch.int32 or kv_frames.dim() != 2 or kv_frames.shape[0] != T \
                or kv_frames.shape[1] < 1:
            raise ValueError(f"st_attention (triton): kv_frames must be int32 [T, n_src] with T = {T}, n_src >= 1, "
                             f"got {kv_frames.dtype} {tuple(kv_frames.shape)}")
        n_src = kv_frames.shape[1]
    Lk = n_src * L
    if bias.numel():
        if bias.dtype != torch.float32 or bias.dim() != 3 or bias.shape[0] not in (1, heads) \
                or tuple(bias.shape[1:]) != (L, Lk):
            raise ValueError(f"st_attention (triton): bias must be float32 [1 or {heads}, {L}, {Lk}], got "
                             f"{bias.dtype} {tuple(bias.shape)}")
    if pos.numel():
        if pos.dtype != torch.float32 or pos.dim() != 2 or pos.shape[0] < L or pos.shape[1] != D:
            raise ValueError(f"st_attention (triton): pos must be float32 [L, D] = [{L}, {D}], got "
                             f"{pos.dtype} {tuple(pos.shape)}")
    for name, x in (("k", k), ("v", v), ("kv_frames", kv_frames), ("bias", bias), ("pos", pos)):
        if x.device != q.device and (x.numel() or name in ("k", "v")):
            raise ValueError(f"st_attention (triton): {name} is on {x.device} but q is on {q.device}")
    return B, T, H, W, C, D, L, n_src, Lk


def _common(q, kv_frames, bias, pos, temporal, L, n_src, B, T, H, W):
    """Arguments shared by every launch: (pointers kvf, bias, pos, flags, n_seq, sizes)."""
    has_bias, has_pos = bias.numel() > 0, pos.numel() > 0
    kvf = kv_frames.contiguous() if not temporal else torch.zeros(1, 1, dtype=torch.int32, device=q.device)
    bias_c = bias.contiguous() if has_bias else q.new_zeros(1, dtype=torch.float32)
    pos_c = pos.contiguous() if has_pos else q.new_zeros(1, dtype=torch.float32)
    n_seq = B * H * W if temporal else B * T
    bias_hs = L * n_src * L if has_bias and bias.shape[0] > 1 else 0
    return kvf, bias_c, pos_c, has_bias, has_pos, n_seq, bias_hs


def _upcast(q) -> bool:
    """bfloat16 dots in float32: CPU tensors run under the interpreter, whose bfloat16 dot is wrong."""
    return q.dtype == torch.bfloat16 and q.device.type == "cpu"


def _grid(n: int):
    if n >= 2**31:
        raise ValueError(f"st_attention (triton): {n} programs exceed the grid's range")
    return (n,)


def st_attention_fwd(q, k, v, kv_frames, bias, pos, heads, temporal, scale):
    """Forward of st_attention.

    Args:
        q, k, v: [B, T, H, W, C] float16/bfloat16/float32, one dtype, any strides; C = heads * D,
            D <= 256.
        kv_frames: int32 [T, n_src] key/value frames of each query frame (spatial); ignored
            (may be [0, 1]) in temporal mode. Entries are clamped into [0, T).
        bias: float32 [Hb, Lq, Lk] (Hb 1 or heads; may hold -inf) or empty.
        pos: float32 [L, D] position table added to q and k, or empty.
        heads: number of heads; temporal: mode; scale: score scale.

    Returns:
        (out [B, T, H, W, C] contiguous in q.dtype, lse [B, T, H, W, heads] float32).

    Example:
        >>> q = torch.randn(1, 8, 4, 4, 64, device="cuda", dtype=torch.float16)
        >>> none = torch.zeros(0, device="cuda")
        >>> out, lse = st_attention_fwd(q, q, q, torch.zeros(0, 1, dtype=torch.int32, device="cuda"),
        ...                             none, none, 2, True, 0.125)
        >>> out.shape, lse.shape
        (torch.Size([1, 8, 4, 4, 64]), torch.Size([1, 8, 4, 4, 2]))
    """
    B, T, H, W, C, D, L, n_src, Lk = _check(q, k, v, kv_frames, bias, pos, heads, temporal)
    out = torch.empty(B, T, H, W, C, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, T, H, W, heads, dtype=torch.float32, device=q.device)
    if lse.numel() == 0:
        return out, lse
    kvf, bias_c, pos_c, has_bias, has_pos, n_seq, bias_hs = _common(q, kv_frames, bias, pos, temporal, L, n_src,
                                                                   B, T, H, W)
    block_d = _pow2(D)
    upcast = _upcast(q)
    SEQ, BM, BN, warps = _config("fwd", temporal, L, block_d)
    n_qb = triton.cdiv(L, BM)
    with _on_device(q):
        _fwd_kernel[_grid(triton.cdiv(n_seq, SEQ) * heads * n_qb)](
            q, k, v, kvf, bias_c, pos_c, out, lse,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
            n_seq, T, H, W, L, n_src, heads, D, bias_hs, Lk, float(scale), n_qb,
            TEMPORAL=bool(temporal), HAS_BIAS=has_bias, HAS_POS=has_pos, SEQ=SEQ,
            BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d, UPCAST=upcast, num_warps=warps,
        )  # fmt: skip
    return out, lse


def _n_parts(n_seq: int, tiles: int, bias_numel: int) -> int:
    """Shares of the sequences in the dbias pass (see the module docstring)."""
    n = max(1, -(-_DBIAS_PROGRAMS // max(tiles, 1)))
    n = min(n, max(1, _DBIAS_PARTIALS // max(bias_numel, 1)))
    return max(1, min(n, n_seq))


def st_attention_bwd(g_out, g_lse, q, k, v, kv_frames, bias, pos, out, lse, heads, temporal, scale,
                     need_q, need_k, need_v, need_bias):
    """Backward of st_attention.

    Args:
        g_out: [B, T, H, W, C] upstream gradient of out, any strides (read in its dtype).
        g_lse: [B, T, H, W, heads] upstream gradient of lse (zeros when unused).
        q, k, v, kv_frames, bias, pos, heads, temporal, scale: as in ``st_attention_fwd``.
        out, lse: the forward's outputs.
        need_q, need_k, need_v, need_bias: which gradients to compute.

    Returns:
        (dq, dk, dv: [B, T, H, W, C] contiguous in q.dtype or None, dbias: like bias, float32,
        summed over sequences (and over heads when bias has one head), or None). Deterministic.
    """
    B, T, H, W, C, D, L, n_src, Lk = _check(q, k, v, kv_frames, bias, pos, heads, temporal)
    # every element of dq, dk, dv is written by exactly one program
    dq = torch.empty(B, T, H, W, C, dtype=q.dtype, device=q.device) if need_q else None
    dk = torch.empty(B, T, H, W, C, dtype=q.dtype, device=q.device) if need_k else None
    dv = torch.empty(B, T, H, W, C, dtype=q.dtype, device=q.device) if need_v else None
    db = torch.zeros_like(bias) if need_bias else None
    n_pix = B * T * H * W
    has_bias = bias.numel() > 0
    need_bias = bool(need_bias) and has_bias
    if n_pix == 0 or not (need_q or need_k or need_v or need_bias):
        return dq, dk, dv, db
    kvf, bias_c, pos_c, has_bias, has_pos, n_seq, bias_hs = _common(q, kv_frames, bias, pos, temporal, L, n_src,
                                                                   B, T, H, W)
    block_d = _pow2(D)
    upcast = _upcast(q)
    split = q.dtype == torch.bfloat16  # see _dot_rounded
    lse = lse.to(torch.float32).contiguous()
    delta = torch.empty_like(lse)
    grad_strides = (T * H * W * C, H * W * C, W * C, C, 1)  # dq, dk, dv: contiguous channels-last
    with _on_device(q):
        if need_q or need_k or need_bias:
            _delta_kernel[_grid(triton.cdiv(n_pix, _BLOCK_P))](
                g_out, out, g_lse, delta, *g_out.stride(), *out.stride(), *g_lse.stride(),
                n_pix, T, H, W, heads, D, BLOCK_P=_BLOCK_P, BLOCK_D=block_d,
            )  # fmt: skip
        common = (*q.stride(), *k.stride(), *v.stride(), *g_out.stride(), *lse.stride())
        sizes = (n_seq, T, H, W, L, n_src, heads, D)
        if need_k or need_v:
            SEQ, BM, BN, warps = _config("dkdv", temporal, L, block_d)
            n_kb = triton.cdiv(L, BN)
            dummy = dk if dk is not None else dv
            _dkdv_kernel[_grid(triton.cdiv(n_seq, SEQ) * heads * n_kb)](
                q, k, v, kvf, bias_c, pos_c, g_out, lse, delta,
                dk if need_k else dummy, dv if need_v else dummy,
                *common, *grad_strides, *sizes, bias_hs, Lk, float(scale), n_kb,
                TEMPORAL=bool(temporal), HAS_BIAS=has_bias, HAS_POS=has_pos, NEED_K=bool(need_k),
                NEED_V=bool(need_v), SEQ=SEQ, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d, UPCAST=upcast, SPLIT=split,
                num_warps=warps,
            )  # fmt: skip
        if need_q:
            SEQ, BM, BN, warps = _config("dq", temporal, L, block_d)
            n_qb = triton.cdiv(L, BM)
            _dq_kernel[_grid(triton.cdiv(n_seq, SEQ) * heads * n_qb)](
                q, k, v, kvf, bias_c, pos_c, g_out, lse, delta, dq,
                *common, *grad_strides, *sizes, bias_hs, Lk, float(scale), n_qb,
                TEMPORAL=bool(temporal), HAS_BIAS=has_bias, HAS_POS=has_pos, SEQ=SEQ,
                BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d, UPCAST=upcast, SPLIT=split, num_warps=warps,
            )  # fmt: skip
        if need_bias:
            _, BM, BN, warps = _config("dbias", temporal, L, block_d)
            Hb = bias.shape[0]
            n_qb, n_kb = triton.cdiv(L, BM), triton.cdiv(L, BN)
            n_parts = _n_parts(n_seq, Hb * n_qb * n_src * n_kb, bias.numel())
            part = torch.zeros(n_parts, Hb, L, Lk, dtype=torch.float32, device=q.device)
            _dbias_kernel[_grid(n_parts * Hb * n_qb * n_src * n_kb)](
                q, k, v, kvf, bias_c, pos_c, g_out, lse, delta, part,
                *common, *sizes, Hb, heads if Hb == 1 else 1, Lk, float(scale), n_qb, n_kb, n_parts,
                TEMPORAL=bool(temporal), HAS_POS=has_pos, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d,
                UPCAST=upcast, num_warps=warps, **({"num_stages": 1} if block_d > 128 else {}),
            )  # fmt: skip
            db = part[0] if n_parts == 1 else part.sum(0)
    return dq, dk, dv, db
