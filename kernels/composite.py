"""Triton backend of ``composite``: volume-rendering compositing over packed samples.

The maths is the one of ``csrc/include/pyengine/composite.h`` (the CPU and CUDA kernels) and
``pyengine/reference/composite.py`` (the specification). Ray ``r`` owns the samples
``[start_r, start_r + count_r)``; within a ray, in order:

    density mode:  tau_i = sigma_i dt_i,  alpha_i = 1 - exp(-tau_i),  T_i = exp(-sum_{j<i} tau_j)
    alpha mode:    T_i = prod_{j<i} (1 - alpha_j)
    w_i = T_i alpha_i,  acc = sum_i w_i v_i,  opacity = sum_i w_i,  depth = sum_i w_i t_mid_i

Backward, with g_i = gw_i + <g_acc, v_i> + g_op + g_depth t_mid_i and the relative suffix
``U_k = g_{k+1} alpha_{k+1} + gT_{k+1} + (1 - alpha_{k+1}) U_{k+1}`` (``U_last = 0``):

    density mode:  dL/dsigma_k = (T_k e_k (g_k - U_k) + ga_k e_k) dt_k,   e_k = exp(-tau_k)
    alpha mode:    dL/dalpha_k = T_k (g_k - U_k) + ga_k
    dL/dv_k = w_k g_acc

Work split: a program owns ``BR`` rays and walks them in chunks of ``BS`` consecutive samples,
a ``[BR, BS]`` tile: every load and store is contiguous along a ray, so a warp touches whole
cache lines. Within a chunk the per-ray scans are ``tl.associative_scan`` along the samples; a
per-ray carry links the chunks. Exclusive scans use a pair (everything but the last element,
the last element), so no value is ever recovered by subtraction or division:

    forward:   exclusive sum of tau (density) or product of 1 - alpha (alpha mode);
    backward:  the suffix U is an affine recurrence U_k = a_{k+1} + b_{k+1} U_{k+1}, with
               a = g alpha + gT and b = 1 - alpha: the chunk is walked from the ray's end (lane j
               holds sample count - 1 - j - chunk * BS) and the scan composes the affine maps.

``BS`` follows the mean samples per ray (16 to 64). Value channels are a ``[BR, BS, CP]`` tile,
``CP`` the next power of two of ``C``. Everything is float32; the host launchers cast.

No autograd here: ``pyengine/ops/composite.py`` wires these two functions into the registered op.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

__all__ = ["composite_bwd", "composite_fwd"]

_TILE = 512  # BR * BS samples per chunk
_NUM_WARPS = 4


@triton.jit
def _alpha_from_tau(tau):
    """1 - exp(-tau) without cancellation for small tau (Triton has no expm1 that runs in the
    interpreter): a 4-term series below |tau| = 0.1 (relative error < tau^4 / 120 < 1e-6)."""
    series = tau * (1.0 - tau * 0.5 * (1.0 - tau * (1.0 / 3.0) * (1.0 - tau * 0.25)))
    return tl.where(tl.abs(tau) < 0.1, series, 1.0 - tl.exp(-tau))


@triton.jit
def _ray_ranges(packed_ptr, rays, rmask, S):
    """(start, count) of each ray, clamped into [0, S] like composite_ray_range in C++."""
    start = tl.load(packed_ptr + rays * 2, mask=rmask, other=0)
    count = tl.load(packed_ptr + rays * 2 + 1, mask=rmask, other=0)
    start = tl.minimum(tl.maximum(start, 0), S)
    count = tl.minimum(tl.maximum(count, 0), S - start)
    return start, count


@triton.jit
def _excl_add(a_rest, a_last, b_rest, b_last):
    """Segments as (sum of all but the last element, the last element); a before b."""
    return a_rest + a_last + b_rest, b_last


@triton.jit
def _excl_mul(a_rest, a_last, b_rest, b_last):
    return a_rest * a_last * b_rest, b_last


@triton.jit
def _excl_affine(ra, rb, la, lb, sa, sb, ma, mb):
    """Affine maps X -> a + b X; a segment as (composition of all but its last map, its last map),
    the earlier lane's map applied first. Segment (ra, rb, la, lb) before (sa, sb, ma, mb):
    rest = b.rest o a.last o a.rest, last = b.last."""
    # a.last o a.rest
    xa = la + lb * ra
    xb = lb * rb
    # b.rest o (a.last o a.rest)
    return sa + sb * xa, sb * xb, ma, mb


@triton.jit
def _lane(x, lanes, j):
    """x[:, j] of a [BR, BS] tile, as [BR]."""
    return tl.sum(tl.where(lanes[None, :] == j, x, 0.0), 1)


@triton.jit
def _composite_fwd_kernel(
    packed_ptr,  # [R, 2] int64
    t0_ptr, t1_ptr, x_ptr,  # [S] float32; x is sigma or alpha
    v_ptr,  # [S, C] float32
    w_ptr, trans_ptr, alpha_ptr,  # [S] float32, preset to 0 / 1 / 0 for uncovered samples
    acc_ptr,  # [R, C] float32
    op_ptr, depth_ptr,  # [R] float32
    R, S, C,
    ALPHA: tl.constexpr,
    CP: tl.constexpr,
    BR: tl.constexpr,
    BS: tl.constexpr,
):
    rays = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    rmask = rays < R
    start, count = _ray_ranges(packed_ptr, rays, rmask, S)
    lanes = tl.arange(0, BS)
    cols = tl.arange(0, CP)
    cmask = cols < C
    if ALPHA:
        carry = tl.full([BR], 1.0, tl.float32)  # product of (1 - alpha) over the earlier chunks
    else:
        carry = tl.zeros([BR], tl.float32)  # sum of tau over the earlier chunks
    opacity = tl.zeros([BR], tl.float32)
    depth = tl.zeros([BR], tl.float32)
    acc = tl.zeros([BR, CP], tl.float32)
    n_max = tl.max(count, 0)
    for base in range(0, n_max, BS):
        j = base + lanes
        active = j[None, :] < count[:, None]
        i = start[:, None] + j[None, :]
        t0 = tl.load(t0_ptr + i, mask=active, other=0.0)
        t1 = tl.load(t1_ptr + i, mask=active, other=0.0)
        x = tl.load(x_ptr + i, mask=active, other=0.0)  # 0 keeps inactive lanes neutral
        if ALPHA:
            f = 1.0 - x
            excl, _ = tl.associative_scan((tl.full([BR, BS], 1.0, tl.float32), f), 1, _excl_mul)
            trans = carry[:, None] * excl
            alpha = x
            carry = carry * _lane(excl * f, lanes, BS - 1)
        else:
            tau = x * (t1 - t0)
            excl, _ = tl.associative_scan((tl.zeros([BR, BS], tl.float32), tau), 1, _excl_add)
            trans = tl.exp(-(carry[:, None] + excl))
            alpha = _alpha_from_tau(tau)
            carry = carry + tl.sum(tau, 1)
        w = trans * alpha  # zero on inactive lanes, where x = 0
        tl.store(w_ptr + i, w, mask=active)
        tl.store(trans_ptr + i, trans, mask=active)
        tl.store(alpha_ptr + i, alpha, mask=active)
        opacity += tl.sum(w, 1)
        depth += tl.sum(w * (t0 + t1) * 0.5, 1)
        m3 = active[:, :, None] & cmask[None, None, :]
        v = tl.load(v_ptr + i[:, :, None] * C + cols[None, None, :], mask=m3, other=0.0)
        acc += tl.sum(w[:, :, None] * v, 1)
    tl.store(op_ptr + rays, opacity, mask=rmask)
    tl.store(depth_ptr + rays, depth, mask=rmask)
    tl.store(acc_ptr + rays[:, None] * C + cols[None, :], acc, mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _composite_bwd_kernel(
    packed_ptr,  # [R, 2] int64
    t0_ptr, t1_ptr, x_ptr,  # [S] float32
    v_ptr,  # [S, C] float32
    trans_ptr,  # [S] float32, the forward's transmittance
    gw_ptr, gt_ptr, ga_ptr,  # [S] float32 upstream gradients of weights, trans, alphas
    gacc_ptr,  # [R, C] float32
    gop_ptr, gdepth_ptr,  # [R] float32
    gx_ptr,  # [S] float32 (NEED_X)
    gv_ptr,  # [S, C] float32 (NEED_V)
    R, S, C,
    ALPHA: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_V: tl.constexpr,
    CP: tl.constexpr,
    BR: tl.constexpr,
    BS: tl.constexpr,
):
    rays = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    rmask = rays < R
    start, count = _ray_ranges(packed_ptr, rays, rmask, S)
    lanes = tl.arange(0, BS)
    cols = tl.arange(0, CP)
    cmask = cols < C
    g_acc = tl.load(gacc_ptr + rays[:, None] * C + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    g_op = tl.load(gop_ptr + rays, mask=rmask, other=0.0)
    g_depth = tl.load(gdepth_ptr + rays, mask=rmask, other=0.0)
    carry = tl.zeros([BR], tl.float32)  # U of the last sample of this chunk (0 at the ray's end)
    n_max = tl.max(count, 0)
    for base in range(0, n_max, BS):
        j = count[:, None] - 1 - base - lanes[None, :]  # from the ray's end backwards
        active = j >= 0
        k = start[:, None] + j
        m3 = active[:, :, None] & cmask[None, None, :]
        t0 = tl.load(t0_ptr + k, mask=active, other=0.0)
        t1 = tl.load(t1_ptr + k, mask=active, other=0.0)
        x = tl.load(x_ptr + k, mask=active, other=0.0)
        trans = tl.load(trans_ptr + k, mask=active, other=0.0)
        dt = t1 - t0
        if ALPHA:
            alpha = x
            one_minus = 1.0 - x
        else:
            tau = x * dt
            alpha = _alpha_from_tau(tau)
            one_minus = tl.exp(-tau)
        w = trans * alpha
        if NEED_V:
            tl.store(gv_ptr + k[:, :, None] * C + cols[None, None, :], w[:, :, None] * g_acc[:, None, :], mask=m3)
        if NEED_X:
            v = tl.load(v_ptr + k[:, :, None] * C + cols[None, None, :], mask=m3, other=0.0)
            g = tl.load(gw_ptr + k, mask=active, other=0.0) + g_op[:, None] + g_depth[:, None] * (t0 + t1) * 0.5
            g += tl.sum(g_acc[:, None, :] * v, 2)
            ga = tl.load(ga_ptr + k, mask=active, other=0.0)
            gt = tl.load(gt_ptr + k, mask=active, other=0.0)
            # this sample's map U_{k-1} = a + b U_k; identity on inactive lanes
            a = tl.where(active, g * alpha + gt, 0.0)
            b = tl.where(active, one_minus, 1.0)
            ra, rb, _, _ = tl.associative_scan(
                (tl.zeros([BR, BS], tl.float32), tl.full([BR, BS], 1.0, tl.float32), a, b), 1, _excl_affine)
            U = ra + rb * carry[:, None]
            if ALPHA:
                d = trans * (g - U) + ga
            else:
                d = (trans * one_minus * (g - U) + ga * one_minus) * dt
            tl.store(gx_ptr + k, d, mask=active)
            carry = _lane(a + b * U, lanes, BS - 1)


# ---------------------------------------------------------------------------------------------
# Host launchers.


def _check(packed_info, t_starts, t_ends, x, values):
    if packed_info.dim() != 2 or packed_info.shape[1] != 2 or packed_info.dtype != torch.int64:
        raise ValueError(f"composite (triton): packed_info must be [R, 2] int64, got "
                         f"{tuple(packed_info.shape)} {packed_info.dtype}")
    S = t_starts.shape[0]
    for name, t in (("t_starts", t_starts), ("t_ends", t_ends), ("x", x)):
        if t.dtype != torch.float32 or tuple(t.shape) != (S,):
            raise ValueError(f"composite (triton): {name} must be [S] float32, got {tuple(t.shape)} {t.dtype}")
    if values.dim() != 2 or values.shape[0] != S or values.dtype != torch.float32:
        raise ValueError(f"composite (triton): values must be [S, C] float32, got {tuple(values.shape)} "
                         f"{values.dtype}")


def _on_device(t):
    """Launch on t's GPU whatever the current device is (Triton launches on the current one)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _tile(R, S, C):
    """(BR, BS): chunks of BS samples per ray, BS the mean samples per ray rounded up to a power
    of two in [16, 64], and BR = 512 / BS rays per program, fewer with more than 4 channels so
    that the [BR, BS, CP] value tile stays at 2048 elements."""
    bs = min(max(triton.next_power_of_2(max(-(-S // max(R, 1)), 1)), 16), 64)
    return max(_TILE // bs // max(_cp(C) // 4, 1), 1), bs


def _cp(C):
    return triton.next_power_of_2(max(int(C), 1))


def composite_fwd(packed_info, t_starts, t_ends, x, values, alpha_mode):
    """Forward of composite.

    Args:
        packed_info: [R, 2] int64 (start, count); ranges are clamped into [0, S].
        t_starts, t_ends, x: [S] float32; x is sigma (alpha_mode False) or alpha (True).
        values: [S, C] float32 (C may be 0).
        alpha_mode: which of densities / alphas x holds.

    Returns:
        (weights [S], transmittance [S], alphas [S], accumulated [R, C], opacity [R], depth [R]).

    Example:
        >>> pi = torch.tensor([[0, 2]], device="cuda")
        >>> t0 = torch.tensor([0.0, 1.0], device="cuda")
        >>> a = torch.tensor([0.5, 0.5], device="cuda")
        >>> composite_fwd(pi, t0, t0 + 1, a, a.new_zeros(2, 0), True)[0]
        tensor([0.5000, 0.2500], device='cuda:0')
    """
    _check(packed_info, t_starts, t_ends, x, values)
    R, S, C = packed_info.shape[0], t_starts.shape[0], values.shape[1]
    weights, alphas = t_starts.new_zeros(S), t_starts.new_zeros(S)
    trans = t_starts.new_ones(S)
    acc, opacity, depth = t_starts.new_empty(R, C), t_starts.new_empty(R), t_starts.new_empty(R)
    if R > 0:
        with _on_device(t_starts):
            BR, BS = _tile(R, S, C)
            _composite_fwd_kernel[(triton.cdiv(R, BR),)](
                packed_info.contiguous(), t_starts.contiguous(), t_ends.contiguous(), x.contiguous(),
                values.contiguous(), weights, trans, alphas, acc, opacity, depth, R, S, C,
                ALPHA=bool(alpha_mode), CP=_cp(C), BR=BR, BS=BS, num_warps=_NUM_WARPS,
            )  # fmt: skip
    return weights, trans, alphas, acc, opacity, depth


def composite_bwd(g_weights, g_trans, g_alphas, g_acc, g_opacity, g_depth, packed_info, t_starts,
                  t_ends, x, values, trans, alpha_mode, need_x, need_values):
    """Backward of composite: one reverse pass per ray, reading the forward's transmittance.

    Args:
        g_weights, g_trans, g_alphas: [S]; g_acc: [R, C]; g_opacity, g_depth: [R] upstream
            gradients (read as float32).
        packed_info, t_starts, t_ends, x, values, alpha_mode: as in ``composite_fwd``.
        trans: [S] the forward's transmittance.
        need_x, need_values: which gradients to compute.

    Returns:
        (grad_x [S] or None, grad_values [S, C] or None), float32; zero for uncovered samples.
    """
    _check(packed_info, t_starts, t_ends, x, values)
    R, S, C = packed_info.shape[0], t_starts.shape[0], values.shape[1]
    need_values = bool(need_values) and C > 0
    gx = t_starts.new_zeros(S) if need_x else None
    gv = t_starts.new_zeros(S, C) if need_values else None
    if R > 0 and (need_x or need_values):
        f = lambda t: t.to(torch.float32).contiguous()
        dummy = t_starts  # pointer of a gradient that is not needed (never touched)
        with _on_device(t_starts):
            BR, BS = _tile(R, S, C)
            _composite_bwd_kernel[(triton.cdiv(R, BR),)](
                packed_info.contiguous(), t_starts.contiguous(), t_ends.contiguous(), x.contiguous(),
                values.contiguous(), f(trans), f(g_weights), f(g_trans), f(g_alphas), f(g_acc),
                f(g_opacity), f(g_depth), gx if need_x else dummy, gv if need_values else dummy,
                R, S, C,
                ALPHA=bool(alpha_mode), NEED_X=bool(need_x), NEED_V=need_values, CP=_cp(C),
                BR=BR, BS=BS, num_warps=_NUM_WARPS,
            )  # fmt: skip
    return gx, gv
