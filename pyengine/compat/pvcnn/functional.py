"""Drop-in for PVCNN's ``modules.functional`` (mit-han-lab/pvcnn, as vendored by PVD and LION).

Same names, argument order and return values as PVCNN's package, on pyengine's ops (any device,
no extension to compile): ``avg_voxelize``, ``trilinear_devoxelize``, ``furthest_point_sample``,
``gather``, ``ball_query``, ``grouping``, ``nearest_neighbor_interpolate``, ``logits_mask``,
``kl_loss`` and ``huber_loss``. ``pyengine.compat.install_pvcnn()`` registers this module under
PVCNN's import name.

Where it differs from PVCNN on purpose:

* Inputs may be float16 / bfloat16 / float64 as well as float32 (PVCNN's kernels take float32).
* Bad input (shapes, dtypes, voxel coordinates outside [0, R)) raises ``ValueError`` /
  ``TypeError`` where PVCNN reads or writes out of bounds.
* ``trilinear_devoxelize``'s ``is_training`` is accepted and ignored: the gradient is always
  available (PVCNN's backward fails after an ``is_training=False`` forward).
* ``logits_mask`` draws its random subsets with torch's generator, not numpy's.

As in PVCNN, gradients reach the features only, never the coordinates: ``trilinear_devoxelize``
and ``nearest_neighbor_interpolate`` detach theirs (pyengine's ops would differentiate them), and
``furthest_point_sample``'s centres are gathered from ``coords``, so they carry its gradient.

Example:
    >>> from pyengine.compat.pvcnn import functional as F
    >>> F.avg_voxelize(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[0, 0], [0, 0], [1, 1]]]), 2).reshape(-1).tolist()
    [0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as nnF
from torch import Tensor

from pyengine.ops import voxelize as _vox
from pyengine.ops.ball_query import ball_query as _ball_query
from pyengine.ops.furthest_point_sample import furthest_point_sample as _fps
from pyengine.ops.grouping import gather as _gather
from pyengine.ops.grouping import grouping as _grouping
from pyengine.ops.nearest_neighbor_interpolate import nearest_neighbor_interpolate as _interpolate

__all__ = [
    "avg_voxelize",
    "ball_query",
    "furthest_point_sample",
    "gather",
    "grouping",
    "huber_loss",
    "kl_loss",
    "logits_mask",
    "nearest_neighbor_interpolate",
    "trilinear_devoxelize",
]

# PVCNN's submodules of ``modules.functional``, all served by this module
SUBMODULES = ("ball_query", "devoxelization", "grouping", "interpolatation", "loss", "sampling", "voxelization")


def __getattr__(name: str):
    # ``import modules.functional.sampling`` finds this module in sys.modules (install_pvcnn
    # registers it under each submodule name) without setting the attribute on the parent
    if name in SUBMODULES:
        return sys.modules[__name__]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def avg_voxelize(features: Tensor, coords: Tensor, resolution: int) -> Tensor:
    """Mean point feature per voxel: [B, C, N] features, [B, 3, N] integer coords in [0, R) ->
    [B, C, R, R, R]. Floating coords are truncated as PVCNN's ``coords.int()``."""
    if coords.is_floating_point():
        coords = coords.int()
    return _vox.avg_voxelize(features, coords, resolution)


def trilinear_devoxelize(features: Tensor, coords: Tensor, resolution: int, is_training: bool = True) -> Tensor:
    """Trilinear interpolation of a [B, C, R, R, R] grid at [B, 3, N] voxel coords -> [B, C, N];
    differentiable w.r.t. the grid (``is_training`` is ignored)."""
    return _vox.trilinear_devoxelize(features, coords.detach(), resolution)


def gather(features: Tensor, indices: Tensor) -> Tensor:
    """``features[b, :, indices[b, m]]``: [B, C, N], integer [B, M] -> [B, C, M]."""
    return _gather(features, indices)


def furthest_point_sample(coords: Tensor, num_samples: int) -> Tensor:
    """Coordinates [B, 3, M] of the ``num_samples`` points that iterative furthest point sampling
    picks from [B, 3, N] (PVCNN returns the centres, not their indices)."""
    return gather(coords, _fps(coords, num_samples))


def ball_query(centers_coords: Tensor, points_coords: Tensor, radius: float, num_neighbors: int) -> Tensor:
    """int [B, M, K] indices of up to K points within ``radius`` of each [B, 3, M] centre among the
    [B, 3, N] points, in index order, padded with the first one found."""
    return _ball_query(centers_coords, points_coords, radius, num_neighbors)


def grouping(features: Tensor, indices: Tensor) -> Tensor:
    """``features[b, :, indices[b, m, k]]``: [B, C, N], integer [B, M, K] -> [B, C, M, K]."""
    return _grouping(features, indices)


def nearest_neighbor_interpolate(points_coords: Tensor, centers_coords: Tensor, centers_features: Tensor) -> Tensor:
    """[B, C, N]: each point's 3 nearest centres' features, weighted by inverse squared distance;
    differentiable w.r.t. centers_features only."""
    return _interpolate(points_coords.detach(), centers_coords.detach(), centers_features)


def logits_mask(coords: Tensor, logits: Tensor, num_points_per_object: int):
    """Sample the points that binary logits mark as foreground (``logits[:, 0] < logits[:, 1]``).

    Per cloud, ``num_points_per_object`` foreground indices: a random subset without repeats
    when there are enough, else every candidate ``M // n`` times plus a random ``M % n`` of them,
    shuffled; all index 0 when there is none.

    Args:
        coords: [B, 3, N].
        logits: [B, 2, N].
        num_points_per_object: M.

    Returns:
        (selected_coords [B, 3, M] centred on the foreground mean, masked_coords_mean [B, 3],
        mask [B, N] bool).
    """
    B, _, N = coords.shape
    M = num_points_per_object
    mask = logits[:, 0] < logits[:, 1]
    n_fg = mask.sum(-1, keepdim=True)
    masked = coords * mask[:, None]
    mean = masked.sum(-1) / n_fg.clamp_min(1).to(coords.dtype)
    selected = torch.zeros(B, M, dtype=torch.int32, device=coords.device)
    for b in range(B):
        candidates = mask[b].nonzero().view(-1)
        n = candidates.numel()
        if n >= M:
            choice = torch.randperm(n, device=coords.device)[:M]
        elif n > 0:
            extra = torch.randperm(n, device=coords.device)[:M % n]
            choice = torch.cat([torch.arange(n, device=coords.device).repeat_interleave(M // n), extra])
            choice = choice[torch.randperm(M, device=coords.device)]
        else:
            continue
        selected[b] = candidates[choice].to(torch.int32)
    return gather(masked - mean[:, :, None], selected), mean, mask


def kl_loss(x: Tensor, y: Tensor) -> Tensor:
    """``mean_b sum_c p (log p - log_softmax(y))`` with ``p = softmax(x)`` over dim 1, x detached."""
    p = nnF.softmax(x.detach(), dim=1)
    return (p * (torch.log(p) - nnF.log_softmax(y, dim=1))).sum(1).mean()


def huber_loss(error: Tensor, delta: float) -> Tensor:
    """Mean Huber loss: ``0.5 e^2`` for ``|e| <= delta``, ``delta (|e| - 0.5 delta)`` beyond."""
    quadratic = error.abs().clamp(max=delta)
    return (0.5 * quadratic.square() + delta * (error.abs() - quadratic)).mean()
