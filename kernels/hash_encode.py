"""Triton backend of the multiresolution hash encoding (Instant-NGP / tiny-cuda-nn ``Grid``).

The maths is the one of ``csrc/include/pyengine/hash_encode.h`` (the CPU and CUDA kernels) and
``pyengine/reference/hash_encode.py`` (the specification). For level ``l`` and dim ``d``:

    u_d  = fma(scale_l, clamp(x_d, 0, 1), 0.5)        base_d = floor(u_d),  t_d = u_d - base_d
    s_d  = t_d  or  t_d^2 (3 - 2 t_d)                  (linear / smoothstep)
    out_l[f] = sum_c w_c table_l[index(base + c), f],  w_c = prod_d (bit_d(c) ? s_d : 1 - s_d)

``index`` is dense (``sum_d p_d res_l^d``) or tcnn's coherent-prime XOR hash
(``XOR_d p_d prime_d``), in uint32 arithmetic, modulo the level size. NaN positions read as 0;
the derivative of ``s_d`` with respect to ``x_d`` is zero where ``x_d`` was outside ``[0, 1]``.

Memory layout: x [N, D] row-major; params [n_entries, F] flat, levels one after another (level
``l`` starts at entry ``offsets[l]``); out / grad_out [N, L * F] with ``out[n, l * F + f]``.

Work split, the same for the three kernels: grid ``(cdiv(N, BLOCK), L)``; a program owns
``BLOCK`` points at one level and walks the ``2^D`` corners of their cells (``D``, ``F`` and
the mode flags are ``tl.constexpr``, so the corner and dim loops unroll and dead paths compile
away). Table gradients and the positions gradient are sums over many programs: they go through
``tl.atomic_add`` into float32 zero buffers ([n_entries * F] and [N, D], the latter summed over
the L level-programs of a point), cast to the caller's dtypes at the end. The per-level
``d_grad_out`` slice of the double backward is owned by one program and written directly.

No autograd here: ``pyengine/ops`` wires these three functions into a ``torch.autograd.Function``.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

__all__ = ["hash_encode_bwd", "hash_encode_bwd_bwd", "hash_encode_fwd"]

LINEAR, SMOOTHSTEP = 0, 1
_BLOCK = 128  # points per program: one point per thread with 4 warps
_NUM_WARPS = 4
_PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Per-element maths, shared by the kernels. Per-dim values travel as tuples of D [BLOCK] tensors.


@triton.jit
def _grid_cell(x_ptr, rows, rmask, scale, D: tl.constexpr, INTERP: tl.constexpr):
    """Cell of BLOCK points at one level: per dim d, tuples of [BLOCK] tensors

        u_d    = fma(scale, clamp(x_d, 0, 1), 0.5)
        base_d = uint32(floor(u_d)),   t_d = u_d - floor(u_d)
        s_d    = t_d              | t_d^2 (3 - 2 t_d)
        ds_d   = scale            | 6 t_d (1 - t_d) scale           (d s_d / d x_d)
        dds_d  = 0                | (6 - 12 t_d) scale^2            (d^2 s_d / d x_d^2)

    with ds_d = dds_d = 0 where x_d lies outside [0, 1] (clamped) or is NaN (read as 0).
    """
    base = ()
    s = ()
    ds = ()
    dds = ()
    for d in tl.static_range(D):
        xd = tl.load(x_ptr + rows * D + d, mask=rmask, other=0.0)
        inside = (xd >= 0.0) & (xd <= 1.0)
        xd = tl.where(xd >= 0.0, tl.where(xd <= 1.0, xd, 1.0), 0.0)
        u = tl.fma(tl.zeros_like(xd) + scale, xd, 0.5)
        fl = tl.floor(u)
        t = u - fl
        # through int64 so that floor(u) >= 2^31 wraps mod 2^32 like the reference's int64 & mask
        base = base + (fl.to(tl.int64).to(tl.uint32),)
        if INTERP == 1:
            s = s + (t * t * (3.0 - 2.0 * t),)
            ds = ds + (tl.where(inside, 6.0 * t * (1.0 - t) * scale, 0.0),)
            dds = dds + (tl.where(inside, (6.0 - 12.0 * t) * scale * scale, 0.0),)
        else:
            s = s + (t,)
            ds = ds + (tl.where(inside, scale, 0.0),)
            dds = dds + (tl.zeros_like(t),)
    return base, s, ds, dds


@triton.jit
def _corner_row(base, c: tl.constexpr, off, size, res, hashed, D: tl.constexpr, F: tl.constexpr):
    """First flat params element of corner c's entry, [BLOCK] int64: (off + index(base + c)) * F.

    index(p) = (hashed ? XOR_d p_d * prime_d : sum_d p_d res^d) mod size, all uint32 (products
    wrap mod 2^32), primes (1, 2654435761, 805459861, 3674653429) as in tiny-cuda-nn.
    """
    h = base[0] * 0
    dense = base[0] * 0
    stride = res * 0 + 1
    for d in tl.static_range(D):
        p = base[d] + ((c >> d) & 1)
        prime = 1
        if d == 1:
            prime = 2654435761
        if d == 2:
            prime = 805459861
        if d == 3:
            prime = 3674653429
        h = h ^ (p * prime)
        dense = dense + p * stride
        stride = stride * res
    idx = tl.where(hashed, h, dense) % size
    return (off + idx.to(tl.int64)) * F


@triton.jit
def _corner_factors(s, c: tl.constexpr, D: tl.constexpr):
    """Corner c's factors fac_d = bit_d(c) ? s_d : 1 - s_d (a tuple), weight w_c = prod_d fac_d."""
    fac = ()
    w = tl.zeros_like(s[0]) + 1.0
    for d in tl.static_range(D):
        if (c >> d) & 1:
            f = s[d]
        else:
            f = 1.0 - s[d]
        fac = fac + (f,)
        w = w * f
    return fac, w


@triton.jit
def _signed(v, c: tl.constexpr, d: tl.constexpr):
    """bit_d(c) ? v : -v, the sign with which dim d's s-derivatives enter corner c's weight."""
    if (c >> d) & 1:
        r = v
    else:
        r = -v
    return r


@triton.jit
def _prod_except(fac, a: tl.constexpr, b: tl.constexpr, D: tl.constexpr):
    """prod_d fac_d over d not in {a, b} (a == b skips one dim only)."""
    p = tl.zeros_like(fac[0]) + 1.0
    for d in tl.static_range(D):
        if d != a and d != b:
            p = p * fac[d]
    return p


@triton.jit
def _level_consts(meta_ptr, scales_ptr, level):
    """Level constants: entry offset (int64), size and resolution (uint32), hashed flag, scale."""
    off = tl.load(meta_ptr + level * 4)
    size = tl.load(meta_ptr + level * 4 + 1).to(tl.uint32)
    res = tl.load(meta_ptr + level * 4 + 2).to(tl.uint32)
    hashed = tl.load(meta_ptr + level * 4 + 3) != 0
    scale = tl.load(scales_ptr + level)
    return off, size, res, hashed, scale


# ---------------------------------------------------------------------------------------------
# Kernels. grid = (cdiv(N, BLOCK), L); program (i, l) owns points [i * BLOCK, (i + 1) * BLOCK)
# at level l.


@triton.jit
def _hash_fwd_kernel(
    x_ptr,  # [N, D] float32
    params_ptr,  # [n_entries * F] float32 / float16 / bfloat16
    out_ptr,  # [N, L * F] params dtype
    meta_ptr,  # [L, 4] int64: offset, size, resolution, hashed
    scales_ptr,  # [L] float32
    N,
    LF,  # L * F, the row stride of out
    D: tl.constexpr,
    F: tl.constexpr,
    INTERP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[n, l F + f] = sum_c w_c table[idx_c, f]   (features accumulated in float32)."""
    level = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < N
    fcols = tl.arange(0, F)
    m2 = rmask[:, None]
    off, size, res, hashed, scale = _level_consts(meta_ptr, scales_ptr, level)
    base, s, _, _ = _grid_cell(x_ptr, rows, rmask, scale, D, INTERP)

    acc = tl.zeros([BLOCK, F], dtype=tl.float32)
    for c in tl.static_range(2**D):
        row = _corner_row(base, c, off, size, res, hashed, D, F)
        _, w = _corner_factors(s, c, D)
        feat = tl.load(params_ptr + row[:, None] + fcols[None, :], mask=m2, other=0.0)
        acc += w[:, None] * feat.to(tl.float32)
    out_ptrs = out_ptr + rows[:, None] * LF + level * F + fcols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _hash_bwd_kernel(
    grad_out_ptr,  # [N, L * F] float32
    x_ptr,  # [N, D] float32
    params_ptr,  # [n_entries * F]
    grad_params_ptr,  # [n_entries * F] float32, zero-initialised (NEED_PARAMS)
    grad_x_ptr,  # [N, D] float32, zero-initialised (NEED_X)
    meta_ptr,
    scales_ptr,
    N,
    LF,
    D: tl.constexpr,
    F: tl.constexpr,
    INTERP: tl.constexpr,
    NEED_PARAMS: tl.constexpr,
    NEED_X: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Backward of one level (hash_level_bwd), with g[f] = dL/dout[n, l F + f]:

        dL/dtable[idx_c, f] += w_c g[f]                                       (atomic)
        dL/dx_e             += sum_c (dw_c/dx_e) sum_f g[f] table[idx_c, f]  (atomic over levels)
        dw_c/dx_e            = (bit_e(c) ? ds_e : -ds_e) prod_{d != e} fac_d

    Table atomics because entries are shared by neighbouring points and by hash collisions.
    """
    level = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < N
    fcols = tl.arange(0, F)
    m2 = rmask[:, None]
    off, size, res, hashed, scale = _level_consts(meta_ptr, scales_ptr, level)
    base, s, ds, _ = _grid_cell(x_ptr, rows, rmask, scale, D, INTERP)
    g = tl.load(grad_out_ptr + rows[:, None] * LF + level * F + fcols[None, :], mask=m2, other=0.0)

    dx = ()
    for _ in tl.static_range(D):
        dx = dx + (tl.zeros([BLOCK], dtype=tl.float32),)
    for c in tl.static_range(2**D):
        row = _corner_row(base, c, off, size, res, hashed, D, F)
        fac, w = _corner_factors(s, c, D)
        ent = row[:, None] + fcols[None, :]  # [BLOCK, F] flat params index of corner c's entry
        if NEED_PARAMS:
            tl.atomic_add(grad_params_ptr + ent, w[:, None] * g, mask=m2, sem="relaxed")
        if NEED_X:
            feat = tl.load(params_ptr + ent, mask=m2, other=0.0)
            dot = tl.sum(g * feat.to(tl.float32), axis=1)
            new_dx = ()
            for e in tl.static_range(D):
                dw = _signed(ds[e], c, e) * _prod_except(fac, e, e, D)
                new_dx = new_dx + (dx[e] + dot * dw,)
            dx = new_dx
    if NEED_X:
        for e in tl.static_range(D):
            tl.atomic_add(grad_x_ptr + rows * D + e, dx[e], mask=rmask, sem="relaxed")


@triton.jit
def _hash_bwd_bwd_kernel(
    gg_x_ptr,  # [N, D] float32: dL/d(grad_x)
    grad_out_ptr,  # [N, L * F] float32
    x_ptr,  # [N, D] float32
    params_ptr,  # [n_entries * F]
    d_grad_out_ptr,  # [N, L * F] grad_out dtype (NEED_G)
    d_x_ptr,  # [N, D] float32, zero-initialised (NEED_X)
    d_params_ptr,  # [n_entries * F] float32, zero-initialised (NEED_PARAMS)
    meta_ptr,
    scales_ptr,
    N,
    LF,
    D: tl.constexpr,
    F: tl.constexpr,
    INTERP: tl.constexpr,
    NEED_G: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_PARAMS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Double backward of one level: the terms flowing through grad_x only (hash_level_bwd_bwd).

    With gg = dL/d(grad_x) [D], g[f] = grad_out[n, l F + f], T_c[f] = table[idx_c, f],
    sg_e = bit_e(c) ? ds_e : -ds_e and a_c = sum_e gg_e dw_c/dx_e:

        dL/dtable[idx_c, f] += a_c g[f]                                      (atomic)
        dL/dg[f]             = sum_c a_c T_c[f]                              (owned, stored)
        dL/dx_k             += sum_c (g . T_c) H_c,k                         (atomic over levels)
        H_c,k  = gg_k sgn(dds_k) prod_{d != k} fac_d
               + sum_{e != k} gg_e sg_e sg_k prod_{d != e, k} fac_d

    (w_c is linear in each s_d, so the diagonal of its Hessian only has the s_k'' term.)
    """
    level = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < N
    fcols = tl.arange(0, F)
    m2 = rmask[:, None]
    off, size, res, hashed, scale = _level_consts(meta_ptr, scales_ptr, level)
    base, s, ds, dds = _grid_cell(x_ptr, rows, rmask, scale, D, INTERP)
    g = tl.load(grad_out_ptr + rows[:, None] * LF + level * F + fcols[None, :], mask=m2, other=0.0)
    gg = ()
    dx = ()
    for e in tl.static_range(D):
        gg = gg + (tl.load(gg_x_ptr + rows * D + e, mask=rmask, other=0.0),)
        dx = dx + (tl.zeros([BLOCK], dtype=tl.float32),)

    dg = tl.zeros([BLOCK, F], dtype=tl.float32)
    for c in tl.static_range(2**D):
        row = _corner_row(base, c, off, size, res, hashed, D, F)
        fac, _ = _corner_factors(s, c, D)
        a = tl.zeros([BLOCK], dtype=tl.float32)
        for e in tl.static_range(D):
            a += gg[e] * (_signed(ds[e], c, e) * _prod_except(fac, e, e, D))
        ent = row[:, None] + fcols[None, :]
        if NEED_PARAMS:
            tl.atomic_add(d_params_ptr + ent, a[:, None] * g, mask=m2, sem="relaxed")
        if NEED_G or NEED_X:
            feat = tl.load(params_ptr + ent, mask=m2, other=0.0).to(tl.float32)
            if NEED_G:
                dg += a[:, None] * feat
            if NEED_X:
                dot = tl.sum(g * feat, axis=1)
                new_dx = ()
                for k in tl.static_range(D):
                    sgk = _signed(ds[k], c, k)
                    h = gg[k] * _signed(dds[k], c, k) * _prod_except(fac, k, k, D)
                    for e in tl.static_range(D):
                        if e != k:
                            h += gg[e] * _signed(ds[e], c, e) * sgk * _prod_except(fac, e, k, D)
                    new_dx = new_dx + (dx[k] + dot * h,)
                dx = new_dx
    if NEED_G:
        dg_ptrs = d_grad_out_ptr + rows[:, None] * LF + level * F + fcols[None, :]
        tl.store(dg_ptrs, dg.to(d_grad_out_ptr.dtype.element_ty), mask=m2)
    if NEED_X:
        for k in tl.static_range(D):
            tl.atomic_add(d_x_ptr + rows * D + k, dx[k], mask=rmask, sem="relaxed")


# ---------------------------------------------------------------------------------------------
# Host launchers.


@functools.lru_cache(maxsize=64)
def _level_tables(
    offsets: tuple, scales: tuple, resolutions: tuple, hashed_mask: int, device: torch.device
):
    """Device level constants: meta [L, 4] int64 (offset, size, res, hashed), scales [L] f32."""
    L = len(scales)
    meta = [
        (
            offsets[lvl],
            offsets[lvl + 1] - offsets[lvl],
            resolutions[lvl] & 0xFFFFFFFF,
            (hashed_mask >> lvl) & 1,
        )
        for lvl in range(L)
    ]
    meta_t = torch.tensor(meta, dtype=torch.int64).reshape(L, 4).to(device)
    # python floats holding float32 values convert exactly
    scales_t = torch.tensor(scales, dtype=torch.float32).to(device)
    return meta_t, scales_t


def _check(x, params, offsets, scales, resolutions, F, interp):
    if x.dim() != 2 or x.shape[1] not in (2, 3, 4):
        raise ValueError(
            f"hash_encode (triton): x must be [N, D] with D in 2..4, got {tuple(x.shape)}"
        )
    if x.dtype != torch.float32:
        raise TypeError(f"hash_encode (triton): x must be float32, got {x.dtype}")
    if params.dtype not in _PARAM_DTYPES:
        raise TypeError(
            f"hash_encode (triton): params must be float32/float16/bfloat16, got {params.dtype}"
        )
    if F not in (1, 2, 4, 8):
        raise ValueError(f"hash_encode (triton): F must be 1, 2, 4 or 8, got {F}")
    if interp not in (LINEAR, SMOOTHSTEP):
        raise ValueError(
            f"hash_encode (triton): interp must be 0 (linear) or 1 (smoothstep), got {interp}"
        )
    L = len(scales)
    if len(offsets) != L + 1 or len(resolutions) != L:
        raise ValueError("hash_encode (triton): offsets must have L + 1 entries and resolutions L")
    if params.numel() != offsets[-1] * F:
        raise ValueError(
            f"hash_encode (triton): params has {params.numel()} values, expected {offsets[-1] * F}"
        )


def _on_device(x):
    """Launch on x's GPU whatever the current device is (Triton launches on the current one)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _launch_args(x, offsets, scales, resolutions, hashed_mask):
    """The cached level tables for these (hashable, normalised) level lists on x's device."""
    return _level_tables(
        tuple(int(o) for o in offsets),
        tuple(float(s) for s in scales),
        tuple(int(r) for r in resolutions),
        int(hashed_mask),
        x.device,
    )


def hash_encode_fwd(x, params, offsets, scales, resolutions, hashed_mask, F, interp):
    """Forward of the hash encoding.

    Args:
        x: [N, D] float32 positions (D in 2..4), clamped to [0, 1].
        params: [offsets[-1] * F] float32 / float16 / bfloat16 flat table.
        offsets: [L + 1] first entry of each level (ints); scales: [L] float32 values;
            resolutions: [L] ints; hashed_mask: bit l set => level l is hashed.
        F: features per level (1, 2, 4, 8); interp: 0 linear, 1 smoothstep.

    Returns:
        [N, L * F] in ``params.dtype``.

    Example:
        >>> lay = hash_grid_layout(HashGridConfig(n_input_dims=3, n_levels=4, log2_hashmap_size=12))
        >>> mask = sum(1 << l for l, h in enumerate(lay.hashed) if h)
        >>> params = torch.randn(lay.n_params * 2, device="cuda") * 1e-2
        >>> x = torch.rand(10, 3, device="cuda")
        >>> hash_encode_fwd(x, params, lay.offsets, lay.scales, lay.resolutions, mask, 2, 0).shape
        torch.Size([10, 8])
    """
    _check(x, params, offsets, scales, resolutions, F, interp)
    N, D = x.shape
    L = len(scales)
    out = torch.empty(N, L * F, dtype=params.dtype, device=x.device)
    if N == 0 or L == 0:
        return out
    meta, sc = _launch_args(x, offsets, scales, resolutions, hashed_mask)
    grid = (triton.cdiv(N, _BLOCK), L)
    with _on_device(x):
        _hash_fwd_kernel[grid](
            x.contiguous(), params.contiguous(), out, meta, sc, N, L * F,
            D=D, F=F, INTERP=interp, BLOCK=_BLOCK, num_warps=_NUM_WARPS,
        )  # fmt: skip
    return out


def hash_encode_bwd(
    grad_out, x, params, offsets, scales, resolutions, hashed_mask, F, interp, need_params, need_x
):
    """Backward of the hash encoding.

    Args:
        grad_out: [N, L * F] upstream gradient (any float dtype; read as float32).
        x, params, offsets, scales, resolutions, hashed_mask, F, interp: as in ``hash_encode_fwd``.
        need_params, need_x: which gradients to compute.

    Returns:
        (grad_params [offsets[-1] * F] in ``params.dtype`` or None,
        grad_x [N, D] in ``x.dtype`` or None).
    """
    _check(x, params, offsets, scales, resolutions, F, interp)
    N, D = x.shape
    L = len(scales)
    gp = torch.zeros(params.numel(), dtype=torch.float32, device=x.device) if need_params else None
    gx = torch.zeros(N, D, dtype=torch.float32, device=x.device) if need_x else None
    if N > 0 and L > 0 and (need_params or need_x):
        meta, sc = _launch_args(x, offsets, scales, resolutions, hashed_mask)
        g = grad_out.reshape(N, L * F).to(torch.float32).contiguous()
        dummy = g  # stands in for the pointer of a gradient not asked for (never touched)
        grid = (triton.cdiv(N, _BLOCK), L)
        with _on_device(x):
            _hash_bwd_kernel[grid](
                g, x.contiguous(), params.contiguous(),
                gp if need_params else dummy, gx if need_x else dummy,
                meta, sc, N, L * F,
                D=D, F=F, INTERP=interp, NEED_PARAMS=bool(need_params), NEED_X=bool(need_x),
                BLOCK=_BLOCK, num_warps=_NUM_WARPS,
            )  # fmt: skip
    grad_params = gp.to(params.dtype) if need_params else None
    grad_x = gx.to(x.dtype) if need_x else None
    return grad_params, grad_x


def hash_encode_bwd_bwd(
    gg_x,
    grad_out,
    x,
    params,
    offsets,
    scales,
    resolutions,
    hashed_mask,
    F,
    interp,
    need_grad_out,
    need_x,
    need_params,
):
    """Double backward: the terms of dL/dgrad_out, dL/dx and dL/dparams that flow through grad_x.

    The terms through grad_params (forward and input-backward with the table replaced by
    dL/dgrad_params) are the caller's to add, as for the C++ ``hash_encode_bwd_bwd``.

    Args:
        gg_x: [N, D] upstream gradient of grad_x (read as float32).
        grad_out: [N, L * F] the backward's upstream gradient (read as float32).
        x, params, offsets, scales, resolutions, hashed_mask, F, interp: as in ``hash_encode_fwd``.
        need_grad_out, need_x, need_params: which gradients to compute.

    Returns:
        (d_grad_out [N, L * F] in ``grad_out.dtype`` or None, d_x [N, D] in ``x.dtype`` or None,
        d_params [offsets[-1] * F] in ``params.dtype`` or None).
    """
    _check(x, params, offsets, scales, resolutions, F, interp)
    N, D = x.shape
    L = len(scales)
    dg = torch.zeros(N, L * F, dtype=grad_out.dtype, device=x.device) if need_grad_out else None
    dx = torch.zeros(N, D, dtype=torch.float32, device=x.device) if need_x else None
    dp = torch.zeros(params.numel(), dtype=torch.float32, device=x.device) if need_params else None
    if N > 0 and L > 0 and (need_grad_out or need_x or need_params):
        meta, sc = _launch_args(x, offsets, scales, resolutions, hashed_mask)
        g = grad_out.reshape(N, L * F).to(torch.float32).contiguous()
        gg = gg_x.reshape(N, D).to(torch.float32).contiguous()
        dummy = g  # stands in for the pointer of a gradient not asked for (never touched)
        grid = (triton.cdiv(N, _BLOCK), L)
        with _on_device(x):
            _hash_bwd_bwd_kernel[grid](
                gg, g, x.contiguous(), params.contiguous(),
                dg if need_grad_out else dummy,
                dx if need_x else dummy,
                dp if need_params else dummy,
                meta, sc, N, L * F,
                D=D, F=F, INTERP=interp,
                NEED_G=bool(need_grad_out), NEED_X=bool(need_x), NEED_PARAMS=bool(need_params),
                BLOCK=_BLOCK, num_warps=_NUM_WARPS,
            )  # fmt: skip
    d_x = dx.to(x.dtype) if need_x else None
    d_params = dp.to(params.dtype) if need_params else None
    return dg, d_x, d_params
