"""Pure-PyTorch multiresolution hash encoding (Instant-NGP), the specification of ``hash_encode``.

Semantics follow tiny-cuda-nn's ``Grid`` encoding so that parameters and outputs compare one to
one. For level ``l`` of ``L``:

* ``scale_l = base_resolution * 2^(l * log2(per_level_scale)) - 1`` (float32 arithmetic),
  ``res_l = ceil(scale_l) + 1``.
* The level holds ``size_l = next_multiple_of_8(res_l^D)`` entries, capped at
  ``2^log2_hashmap_size`` for hash grids. A level whose dense grid ``res_l^D`` does not fit
  ``size_l`` is hashed with tcnn's coherent-prime XOR hash
  ``h(p) = XOR_d p_d * prime_d mod 2^32``; otherwise it is indexed densely
  ``sum_d p_d * res_l^d``. Either index is taken modulo ``size_l``.
* A position ``x`` in ``[0, 1]^D`` maps to ``u = scale_l * x + 0.5``; the cell corner is
  ``floor(u)`` and the interpolation weight per dim is ``s(u - floor(u))`` with ``s(t) = t``
  (linear) or ``s(t) = t^2 (3 - 2 t)`` (smoothstep).
* The output for level ``l`` is ``sum_c w_c * table_l[index(corner_c)]`` over the ``2^D`` cell
  corners, with ``w_c = prod_d (s_d if bit_d(c) else 1 - s_d)``; levels are concatenated,
  ``out[n, l * F + f]``.

Out-of-range positions are clamped to ``[0, 1]`` (NaN reads as 0); their gradient is zero in
the clamped coordinates, as ``torch.clamp`` would give. Parameters are one flat tensor of
``n_params * F`` values laid out ``[entry, feature]``, levels one after another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["HashGridConfig", "HashGridLayout", "hash_grid_layout", "hash_encode"]

#: tiny-cuda-nn's coherent primes; the first is 1 so that neighbouring cells along x stay close.
PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
INTERPOLATIONS = ("linear", "smoothstep")
GRID_TYPES = ("hash", "dense")
MAX_LEVELS = 32


@dataclass(frozen=True)
class HashGridConfig:
    """Hyper-parameters of a multiresolution grid encoding (tcnn names, snake case).

    Example:
        >>> cfg = HashGridConfig(n_input_dims=3, n_levels=16, n_features_per_level=2)
        >>> cfg.layout().n_params * cfg.n_features_per_level  # length of the flat params
        14229504
    """

    n_input_dims: int = 3
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: float = 16.0
    per_level_scale: float = 2.0
    interpolation: str = "linear"
    grid_type: str = "hash"

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"HashGridConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        if self.n_input_dims not in (2, 3, 4):
            bad("n_input_dims", "2, 3 or 4")
        if not (isinstance(self.n_levels, int) and 1 <= self.n_levels <= MAX_LEVELS):
            bad("n_levels", f"an int in [1, {MAX_LEVELS}]")
        if self.n_features_per_level not in (1, 2, 4, 8):
            bad("n_features_per_level", "1, 2, 4 or 8")
        if not (isinstance(self.log2_hashmap_size, int) and 1 <= self.log2_hashmap_size <= 30):
            bad("log2_hashmap_size", "an int in [1, 30]")
        if not (float(self.base_resolution) >= 1.0):
            bad("base_resolution", "a number >= 1")
        if not (float(self.per_level_scale) >= 1.0):
            bad("per_level_scale", "a number >= 1")
        if self.interpolation not in INTERPOLATIONS:
            bad("interpolation", f"one of {INTERPOLATIONS}")
        if self.grid_type not in GRID_TYPES:
            bad("grid_type", f"one of {GRID_TYPES}")

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    def layout(self) -> HashGridLayout:
        return hash_grid_layout(self)

    def n_params(self) -> int:
        """Length of the flat parameter tensor (entries times features)."""
        return self.layout().n_params * self.n_features_per_level


@dataclass(frozen=True)
class HashGridLayout:
    """Per-level tables derived from a config: what every backend's kernel needs."""

    offsets: tuple  # [L + 1] first entry of each level; offsets[L] = n_params (in entries)
    scales: tuple  # [L] float32 values
    resolutions: tuple  # [L]
    hashed: tuple  # [L] bool

    @property
    def n_params(self) -> int:
        return self.offsets[-1]

    def sizes(self):
        return [b - a for a, b in zip(self.offsets[:-1], self.offsets[1:])]


@lru_cache(maxsize=256)
def hash_grid_layout(cfg: HashGridConfig) -> HashGridLayout:
    D = cfg.n_input_dims
    log2_pls = np.log2(np.float32(cfg.per_level_scale), dtype=np.float32)
    offsets, scales, resolutions, hashed = [0], [], [], []
    for level in range(cfg.n_levels):
        scale = np.float32(
            np.exp2(np.float32(level) * log2_pls, dtype=np.float32) * np.float32(cfg.base_resolution)
        ) - np.float32(1.0)
        res = int(math.ceil(float(scale))) + 1
        if res > (1 << 24):
            raise ValueError(f"HashGridConfig: level {level} has resolution {res} > 2^24 (beyond float32 "
                             "precision of positions); lower n_levels, base_resolution or per_level_scale")
        dense = res**D
        size = min(dense, (1 << 31) - 1)
        size = (size + 7) // 8 * 8
        if cfg.grid_type == "hash":
            size = min(size, 1 << cfg.log2_hashmap_size)
        elif dense > (1 << 31) - 8:
            raise ValueError(
                f"HashGridConfig: dense level {level} needs {res}^{D} entries, more than 2^31; "
                "lower n_levels or per_level_scale, or use grid_type='hash'"
            )
        offsets.append(offsets[-1] + size)
        scales.append(float(scale))
        resolutions.append(res)
        hashed.append(dense > size)
    if offsets[-1] * cfg.n_features_per_level >= 2**31:
        raise ValueError("HashGridConfig: the parameter table would exceed 2^31 values")
    return HashGridLayout(tuple(offsets), tuple(scales), tuple(resolutions), tuple(hashed))


def _interp(t: torch.Tensor, interpolation: str) -> torch.Tensor:
    if interpolation == "smoothstep":
        return t * t * (3.0 - 2.0 * t)
    return t


def _clamp_unit(x: torch.Tensor) -> torch.Tensor:
    # NaN compares false both ways and so reads as 0, like the C++ and Triton kernels.
    return torch.where(x >= 0, torch.where(x <= 1, x, torch.ones_like(x)), torch.zeros_like(x))


def _fma(x: torch.Tensor, a: torch.Tensor, b: float) -> torch.Tensor:
    """x * a + b rounded once, as the kernels' fma: the float32 product is exact in float64."""
    if x.dtype == torch.float64:
        return x * a + b
    return (x.double() * a.double() + b).to(x.dtype)


def hash_encode(positions: torch.Tensor, params: torch.Tensor, cfg: HashGridConfig,
                layout: HashGridLayout | None = None) -> torch.Tensor:
    """Multiresolution hash encoding, plain PyTorch (differentiable to any order by autograd).

    Args:
        positions: [..., D] floating point, expected in [0, 1] (clamped otherwise).
        params: [n_params * F] flat table (``cfg.n_params()`` values), any float dtype.
        cfg: the grid's hyper-parameters.
        layout: ``hash_grid_layout(cfg)``, or the layout to use instead (kernel arguments).

    Returns:
        [..., L * F] in ``params.dtype``; computed in float64 when either input is float64,
        otherwise in float32.

    Example:
        >>> cfg = HashGridConfig(n_input_dims=3, n_levels=4, log2_hashmap_size=12)
        >>> params = torch.randn(cfg.n_params()) * 1e-2
        >>> hash_encode(torch.rand(10, 3), params, cfg).shape
        torch.Size([10, 8])
    """
    D, L, F = cfg.n_input_dims, cfg.n_levels, cfg.n_features_per_level
    lay = layout if layout is not None else hash_grid_layout(cfg)
    compute = torch.float64 if torch.float64 in (positions.dtype, params.dtype) else torch.float32
    batch = positions.shape[:-1]
    x = _clamp_unit(positions.reshape(-1, D).to(compute))
    table = params.to(compute).reshape(-1, F)
    N = x.shape[0]

    # corner c has bit d set -> +1 along dim d
    bits = torch.tensor([[(c >> d) & 1 for d in range(D)] for c in range(1 << D)], device=x.device)
    primes = torch.tensor(PRIMES[:D], dtype=torch.int64, device=x.device)
    outs = []
    for level in range(L):
        scale = torch.tensor(lay.scales[level], dtype=torch.float32).to(compute)
        res, size, off = lay.resolutions[level], lay.sizes()[level], lay.offsets[level]
        u = _fma(x, scale, 0.5)
        base = torch.floor(u)
        s = _interp(u - base, cfg.interpolation)  # [N, D]
        corner = base.to(torch.int64)[:, None, :] + bits[None]  # [N, 2^D, D]
        corner = corner & 0xFFFFFFFF  # uint32 arithmetic, as the kernels do
        if lay.hashed[level]:
            idx = torch.zeros(corner.shape[:-1], dtype=torch.int64, device=x.device)
            for d in range(D):
                idx = idx ^ ((corner[..., d] * primes[d]) & 0xFFFFFFFF)
        else:
            idx = torch.zeros(corner.shape[:-1], dtype=torch.int64, device=x.device)
            stride = 1
            for d in range(D):
                idx = idx + corner[..., d] * stride
                stride *= res
            idx = idx & 0xFFFFFFFF
        idx = idx % size + off
        w = torch.where(bits[None].bool(), s[:, None, :], 1.0 - s[:, None, :]).prod(-1)  # [N, 2^D]
        feats = table[idx.reshape(-1)].reshape(N, 1 << D, F)
        outs.append((w[..., None] * feats).sum(1))
    out = torch.cat(outs, dim=-1) if outs else x.new_zeros(N, 0)
    return out.to(params.dtype).reshape(*batch, L * F)


# The kernels' arguments: the layout as plain lists (see pyengine.ops.hash_encode.kernel_args).

def _config_of(D, offsets, scales, resolutions, hashed_mask, F, interp) -> tuple[HashGridConfig, HashGridLayout]:
    L = len(scales)
    lay = HashGridLayout(tuple(offsets), tuple(float(s) for s in scales), tuple(resolutions),
                         tuple(bool(hashed_mask >> level & 1) for level in range(L)))
    # only D, L, F and the interpolation of the config are read once the layout is given
    cfg = HashGridConfig(D, L, F, interpolation=("linear", "smoothstep")[interp])
    return cfg, lay


def hash_encode_fwd(x, params, offsets, scales, resolutions, hashed_mask, F, interp):
    """``hash_encode`` with the kernels' arguments: x [N, D], the layout as lists -> [N, L * F]."""
    cfg, lay = _config_of(x.shape[-1], offsets, scales, resolutions, hashed_mask, F, interp)
    return hash_encode(x, params, cfg, layout=lay)


def hash_encode_bwd_bwd(gg_x, grad_out, x, params, offsets, scales, resolutions, hashed_mask, F, interp,
                        need_grad_out, need_x, need_params):
    """Gradients of ``<gg_x, d/dx <grad_out, hash_encode(x, params)>>`` w.r.t. grad_out, x and
    params (the terms of the double backward that flow through the positions-gradient)."""
    def f(xs, ps):
        return hash_encode_fwd(xs, ps, offsets, scales, resolutions, hashed_mask, F, interp)

    def dx_of(go, xs, ps):
        return torch.func.vjp(f, xs, ps)[1](go)[0]

    _, vjp = torch.func.vjp(dx_of, grad_out.to(params.dtype), x, params)
    d_go, d_x, d_p = vjp(gg_x.to(x.dtype))
    return (d_go if need_grad_out else None, d_x if need_x else None, d_p if need_params else None)
