"""Pure-PyTorch point-voxel conversions, the specification of ``avg_voxelize`` and ``trilinear_devoxelize``.

The maths is PVCNN's. A grid of resolution ``R`` has ``V = R^3`` voxels; voxel ``(x, y, z)`` sits
at the flat index ``x R^2 + y R + z`` of a ``[B, C, R, R, R]`` grid.

* ``avg_voxelize``: point ``n`` of batch ``b`` falls into the voxel of its integer coordinates,
  each clamped into ``[0, R - 1]``; ``grid[b, :, v]`` is the mean of the features of the points in
  voxel ``v`` (0 where there are none).
* ``trilinear_devoxelize``: each real coordinate (voxel units) is clamped into ``[0, R - 1]``; per
  axis ``lo = floor(x)``, ``hi = min(lo + 1, R - 1)``, ``f = x - lo``; the output is the sum over the
  eight corners of ``wx wy wz grid[corner]`` with ``w = 1 - f`` at ``lo`` and ``f`` at ``hi``.
  Differentiable w.r.t. the grid and the coordinates (zero gradient strictly outside
  ``[0, R - 1]``, as clamp's).
"""

from __future__ import annotations

import torch

__all__ = ["avg_voxelize", "avg_voxelize_fwd", "trilinear_devoxelize", "trilinear_devoxelize_fwd"]


def avg_voxelize(features: torch.Tensor, coords: torch.Tensor, resolution: int):
    """Mean feature per voxel, plain PyTorch (differentiable w.r.t. features).

    Args:
        features: [B, C, N] point features.
        coords: [B, 3, N] integer voxel coordinates (clamped into [0, R - 1]).
        resolution: R.

    Returns:
        (grid [B, C, R, R, R] in features' dtype, idx [B, N] int32 flat voxel of each point,
        counts [B, R^3] int32 points per voxel).

    Example:
        >>> grid, idx, counts = avg_voxelize(torch.tensor([[[1.0, 3.0, 5.0]]]),
        ...                                  torch.tensor([[[0, 0, 1], [0, 0, 1], [1, 1, 0]]]), 2)
        >>> grid.reshape(-1).tolist(), idx.tolist()
        ([0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0], [[1, 1, 6]])
    """
    B, C, N = features.shape
    R = resolution
    V = R ** 3
    c = coords.long().clamp(0, R - 1)
    idx = (c[:, 0] * R + c[:, 1]) * R + c[:, 2]
    counts = torch.zeros(B, V, dtype=torch.int64, device=idx.device).scatter_add_(1, idx, torch.ones_like(idx))
    sums = features.new_zeros(B, C, V).scatter_add(2, idx[:, None].expand(B, C, N), features)
    grid = sums / counts.clamp(min=1)[:, None].to(features.dtype)
    return grid.reshape(B, C, R, R, R), idx.int(), counts.int()


def avg_voxelize_fwd(features, coords, resolution, deterministic):
    """``avg_voxelize`` with the kernels' arguments (``deterministic`` changes nothing here)."""
    return avg_voxelize(features, coords, resolution)


def trilinear_devoxelize(grid: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear lookup of the grid at every point, plain PyTorch (differentiable w.r.t. both).

    Args:
        grid: [B, C, R, R, R] voxel features.
        coords: [B, 3, N] real coordinates in voxel units (clamped into [0, R - 1]; NaN is not
            supported).

    Returns:
        [B, C, N] in the promoted dtype of grid and coords.

    Example:
        >>> grid = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
        >>> trilinear_devoxelize(grid, torch.tensor([[[0.5], [0.0], [1.0]]])).tolist()
        [[[3.0]]]
    """
    B, C, R = grid.shape[:3]
    N = coords.shape[2]
    x = coords.clamp(0, R - 1)
    lo = x.detach().floor()
    f = x - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=R - 1)
    flat = grid.reshape(B, C, R ** 3)
    out = None
    for k in range(8):
        w, v = None, 0
        for d, bit in enumerate((k & 4, k & 2, k & 1)):
            wd = f[:, d] if bit else 1 - f[:, d]
            w = wd if w is None else w * wd
            v = v * R + (hi[:, d] if bit else lo[:, d])
        term = w[:, None] * flat.gather(2, v[:, None].expand(B, C, N))
        out = term if out is None else out + term
    return out


def trilinear_devoxelize_fwd(grid, coords, deterministic):
    """``trilinear_devoxelize`` with the kernels' arguments."""
    return trilinear_devoxelize(grid, coords)
