"""``ball_query``: PVCNN's ball query, the first K points within a radius of every centre.

Kernels (``pyengine.reference.ball_query``, ``pyengine._C``): ``ball_query(centers_coords,
points_coords, radius, num_neighbors) -> [B, M, K] int32``; every backend returns the same
indices (distances rounded the same way, pyengine/points.h). No reduction: deterministic.
"""

from __future__ import annotations

import math

import torch

from pyengine.ops import _checked
from pyengine.ops._define import FLOAT, T, check, define
from pyengine.ops.furthest_point_sample import check_count, compute_dtype
from pyengine.reference import ball_query as _ref

__all__ = ["ball_query"]

OP = define("ball_query", "(Tensor centers_coords, Tensor points_coords, float radius, int num_neighbors) -> Tensor",
            fake=lambda c, p, r, k: c.new_empty(c.shape[0], c.shape[2], k, dtype=torch.int32),
            reference=_ref, cpu=True, cuda=True)


@torch.no_grad()
def ball_query(centers_coords: torch.Tensor, points_coords: torch.Tensor, radius: float, num_neighbors: int, *,
               backend: str | None = None) -> torch.Tensor:
    """Indices of the first ``num_neighbors`` points within ``radius`` of every centre (PVCNN's rule).

    The neighbours of centre ``m`` are the points ``n`` with squared distance strictly below
    ``radius^2``, the first K of them in index order. When fewer than K points are found, the
    remaining slots repeat the first one found; a centre with no point within the radius gets
    index 0 in every slot (as PVCNN's zero-filled output), so use the distances to tell.

    Args:
        centers_coords: [B, 3, M] float16 / bfloat16 / float32 / float64.
        points_coords: [B, 3, N] floating (both computed in float32, or float64 when either is).
        radius: a finite number >= 0.
        num_neighbors: K >= 1.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        [B, M, K] int32 point indices. Not differentiable.

    Example:
        >>> points = torch.tensor([[[0.0, 3.0, 0.5, 0.2], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
        >>> ball_query(torch.zeros(1, 3, 1), points, 1.0, 4).tolist()
        [[[0, 2, 3, 0]]]
    """
    check("ball_query", {"centers_coords": T(FLOAT, "B 3 M"), "points_coords": T(FLOAT, "B 3 N")},
          {"centers_coords": centers_coords, "points_coords": points_coords})
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"ball_query: radius must be a finite number >= 0, got {radius!r}")
    check_count("ball_query", "num_neighbors", num_neighbors, 1)
    dtype = compute_dtype(centers_coords, points_coords)
    out = OP(centers_coords.to(dtype).contiguous(), points_coords.to(dtype).contiguous(), float(radius),
             num_neighbors, backend=backend)
    if points_coords.shape[2] > 0:  # indices of points_coords (with no points, the fill 0 is out of range)
        _checked.mark(out, ("indices", points_coords.shape[2]))
    return out
