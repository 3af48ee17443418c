"""Point-voxel conversions of PVCNN: ``avg_voxelize``, ``trilinear_devoxelize`` and ``normalize_coords``.

``avg_voxelize()`` and ``trilinear_devoxelize()`` check their inputs and run the ops defined below.
Kernels (``pyengine.reference.voxelize``, ``pyengine._C``): ``avg_voxelize_fwd(features, coords,
resolution, deterministic) -> (grid, idx, counts)`` with ``avg_voxelize_bwd`` reading idx and
counts, and ``trilinear_devoxelize_fwd(grid, coords, deterministic)`` with its ``_bwd``.

Determinism: the reductions into voxels (voxelize's sums, devoxelize's grid gradient) are
bit-identical from run to run on the CPU kernel always, and on CUDA when ``deterministic`` is
true, where they are sorted-segment reductions instead of atomics (see csrc/include/pyengine/
voxelize.h). ``deterministic=None`` follows ``torch.are_deterministic_algorithms_enabled()`` or
the environment variable ``PYENGINE_DETERMINISTIC=1``. The reference backend is as deterministic
as torch's ``scatter_add`` on the device.
"""

from __future__ import annotations

import os

import torch

from pyengine.ops import _checked
from pyengine.ops._define import FLOAT, INDEX, T, check, define
from pyengine.reference import voxelize as _ref

__all__ = ["avg_voxelize", "normalize_coords", "trilinear_devoxelize"]

MAX_RESOLUTION = 1290  # R^3 voxel indices fit int32


def _avg_fake(features, coords, resolution, deterministic):
    B, _, N = features.shape
    R = resolution
    return (features.new_empty(B, features.shape[1], R, R, R), coords.new_empty(B, N, dtype=torch.int32),
            coords.new_empty(B, R ** 3, dtype=torch.int32))


AVG_OP = define(
    "avg_voxelize", "(Tensor features, Tensor coords, int resolution, bool deterministic) -> (Tensor, Tensor, Tensor)",
    grads=("features",), save=(1, 2), fake=_avg_fake, reference=_ref, cpu=True, cuda=True)

DEVOX_OP = define(
    "trilinear_devoxelize", "(Tensor grid, Tensor coords, bool deterministic) -> Tensor", grads=("grid", "coords"),
    fake=lambda grid, coords, det: grid.new_empty(grid.shape[0], grid.shape[1], coords.shape[2]),
    reference=_ref, cpu=True, cuda=True)


def _deterministic(flag: bool | None) -> bool:
    if flag is not None:
        return bool(flag)
    return torch.are_deterministic_algorithms_enabled() or os.environ.get("PYENGINE_DETERMINISTIC", "0") == "1"


def _check_resolution(op: str, resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"{op}: resolution must be an int in [1, {MAX_RESOLUTION}], got {resolution!r}")
    return resolution


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_coords(coords: torch.Tensor, resolution: int) -> None:
    """Raises ValueError unless every integer coordinate lies in [0, resolution). One device sync,
    once per unchanged ``coords`` and ``resolution`` (``_checked``)."""
    if coords.numel() == 0 or _checked.passed(coords, ("voxel_coords", resolution)):
        return
    bad = (coords < 0) | (coords >= resolution)
    if bool(bad.any()):
        b, d, n = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"avg_voxelize: coords must lie in [0, resolution) = [0, {resolution}); coords[{b}, {d}, "
                         f"{n}] = {int(coords[b, d, n])} (pass validate=False to clamp into [0, {resolution - 1}])")
    _checked.mark(coords, ("voxel_coords", resolution))


def avg_voxelize(features: torch.Tensor, coords: torch.Tensor, resolution: int, *, return_indices: bool = False,
                 deterministic: bool | None = None, backend: str | None = None, validate: bool = True):
    """Mean of the point features in each voxel (PVCNN's ``avg_voxelize``).

    Point ``n`` of batch ``b`` falls into voxel ``idx[b, n] = x R^2 + y R + z`` of its coordinates
    ``coords[b, :, n] = (x, y, z)``; ``grid[b, c].view(-1)[v]`` is the mean of ``features[b, c, n]``
    over the points of voxel ``v``, 0 for empty voxels. The gradient is
    ``dL/dfeatures[b, c, n] = dL/dgrid[b, c, idx[b, n]] / counts[b, idx[b, n]]``.

    Args:
        features: [B, C, N] float16 / bfloat16 / float32 / float64 (sums in float32, float64 in
            float64).
        coords: [B, 3, N] int32 / int64 voxel coordinates in [0, R) (e.g. from
            ``normalize_coords``); checked unless ``validate=False``, then clamped into [0, R - 1].
        resolution: R in [1, 1290].
        return_indices: also return ``idx`` [B, N] int32 and ``counts`` [B, R^3] int32.
        deterministic: bit-identical sums from run to run on CUDA (sorted segments instead of
            atomics); None: ``torch.are_deterministic_algorithms_enabled()`` or
            ``PYENGINE_DETERMINISTIC=1``. The CPU kernel always is.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).
        validate: check the coordinates' range (one device sync).

    Returns:
        grid [B, C, R, R, R] in features' dtype, or ``(grid, idx, counts)`` with
        ``return_indices``. Differentiable w.r.t. features.

    Example:
        >>> grid = avg_voxelize(torch.tensor([[[1.0, 3.0, 5.0]]]), torch.tensor([[[0, 0, 1], [0, 0, 1], [1, 1, 0]]]), 2)
        >>> grid.reshape(-1).tolist()
        [0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0]
    """
    check("avg_voxelize", {"features": T(FLOAT, "B C N"), "coords": T(INDEX, "B 3 N")},
          {"features": features, "coords": coords})
    R = _check_resolution("avg_voxelize", resolution)
    if validate:
        check_coords(coords, R)
    elif coords.dtype == torch.int64:
        coords = coords.clamp(0, R - 1)  # before the cast to int32 can wrap
    grid, idx, counts = AVG_OP(features.to(_compute_dtype(features)).contiguous(), coords.to(torch.int32).contiguous(),
                               R, _deterministic(deterministic), backend=backend)
    grid = grid.to(features.dtype)
    return (grid, idx, counts) if return_indices else grid


def trilinear_devoxelize(grid: torch.Tensor, coords: torch.Tensor, resolution: int, *,
                         deterministic: bool | None = None, backend: str | None = None) -> torch.Tensor:
    """Trilinear interpolation of a voxel grid at points (PVCNN's ``trilinear_devoxelize``).

    Each coordinate is clamped into [0, R - 1]; per axis ``lo = floor(x)``, ``hi = min(lo + 1, R -
    1)`` and ``f = x - lo``, and ``out[b, c, n]`` is the sum over the eight corners of ``wx wy wz
    grid[b, c, x, y, z]`` with ``w = 1 - f`` at ``lo`` and ``f`` at ``hi``. Unlike PVCNN's op it
    is differentiable w.r.t. the coordinates too: the derivative of that sum, zero on an axis whose
    coordinate lies strictly outside [0, R - 1] (clamp's rule).

    Args:
        grid: [B, C, R, R, R] float16 / bfloat16 / float32 / float64 (computed in float32, float64
            in float64).
        coords: [B, 3, N] floating voxel coordinates (e.g. from ``normalize_coords``), cast to the
            grid's compute dtype. NaN reads voxel 0 in the kernels.
        resolution: R, the grid's size.
        deterministic: bit-identical grid gradients from run to run on CUDA (sorted segments
            instead of atomics); None as in ``avg_voxelize``. The CPU kernel always is.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        [B, C, N] in grid's dtype, differentiable w.r.t. grid and coords.

    Example:
        >>> grid = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
        >>> trilinear_devoxelize(grid, torch.tensor([[[0.5], [0.0], [1.0]]]), 2).tolist()
        [[[3.0]]]
    """
    check("trilinear_devoxelize", {"grid": T(FLOAT, "B C R R R"), "coords": T(FLOAT, "B 3 N")},
          {"grid": grid, "coords": coords})
    R = _check_resolution("trilinear_devoxelize", resolution)
    if grid.shape[2] != R:
        raise ValueError(f"trilinear_devoxelize: grid must be [B, C, R, R, R] with R = resolution = {R}, "
                         f"got shape {tuple(grid.shape)}")
    dtype = _compute_dtype(grid)
    out = DEVOX_OP(grid.to(dtype).contiguous(), coords.to(dtype).contiguous(), _deterministic(deterministic),
                   backend=backend)
    return out.to(grid.dtype)


def normalize_coords(points: torch.Tensor, resolution: int, eps: float = 0.0):
    """PVCNN's voxel coordinates of point clouds (its ``Voxelization`` with ``normalize=True``).

    Per cloud: centre on the mean, divide by ``2 max_n |p_n| + eps`` (the farthest point lands at
    radius 0.5), add 0.5, multiply by R and clamp into [0, R - 1]. A cloud whose points all
    coincide (zero radius, where PVCNN divides by zero with ``eps = 0``) is divided by 1 instead,
    so all its points land at the centre, min(R / 2, R - 1). Plain PyTorch.

    Args:
        points: [B, 3, N] floating.
        resolution: R in [1, 1290].
        eps: added to the divisor, as PVCNN's ``eps``.

    Returns:
        (coords [B, 3, N] in points' dtype, for ``trilinear_devoxelize``; voxels [B, 3, N] int32,
        the rounded coords, for ``avg_voxelize``). coords is differentiable w.r.t. points.

    Example:
        >>> coords, voxels = normalize_coords(torch.tensor([[[-1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]]), 8)
        >>> coords.tolist(), voxels.tolist()
        ([[[0.0, 7.0], [4.0, 4.0], [4.0, 4.0]]], [[[0, 7], [4, 4], [4, 4]]])
    """
    check("normalize_coords", {"points": T(FLOAT, "B 3 N")}, {"points": points})
    R = _check_resolution("normalize_coords", resolution)
    centred = points - points.mean(2, keepdim=True)
    if points.shape[2] == 0:
        return centred, centred.to(torch.int32)
    scale = centred.norm(dim=1, keepdim=True).amax(2, keepdim=True) * 2.0 + eps
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    coords = (centred / scale + 0.5).mul(R).clamp(0, R - 1)
    return coords, coords.round().to(torch.int32)
