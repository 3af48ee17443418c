"""Pure-PyTorch ball query, the specification of ``ball_query`` (PVCNN's rule).

For centre ``m``, the neighbours are the first ``K`` points ``n`` in index order whose squared
distance ``d2`` (centre minus point, see ``points.dist2``) is strictly below ``radius^2`` (the
square rounded in the coordinates' dtype). Slots beyond the number found repeat the first
neighbour; a centre with no point within the radius gets index 0 in every slot.
"""

from __future__ import annotations

import torch

from pyengine.reference.points import dist2

__all__ = ["ball_query"]


def ball_query(centers_coords: torch.Tensor, points_coords: torch.Tensor, radius: float,
               num_neighbors: int) -> torch.Tensor:
    """Neighbour indices of every centre.

    Args:
        centers_coords: [B, 3, M].
        points_coords: [B, 3, N], same dtype.
        radius: the ball's radius (strict: a point at exactly ``radius`` is out).
        num_neighbors: K >= 1.

    Returns:
        [B, M, K] int32.

    Example:
        >>> points = torch.tensor([[[0.0, 3.0, 0.5, 0.2], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
        >>> ball_query(torch.zeros(1, 3, 1), points, 1.0, 4).tolist()
        [[[0, 2, 3, 0]]]
    """
    B, _, M = centers_coords.shape
    N = points_coords.shape[2]
    K = num_neighbors
    r = torch.tensor(radius, dtype=centers_coords.dtype)
    within = dist2(centers_coords, points_coords) < (r * r).to(centers_coords.device)  # [B, M, N]
    n = torch.arange(N, device=within.device).expand(B, M, N)
    order = torch.where(within, n, N).sort(dim=-1).values  # the indices within first, in order
    if N < K:
        order = torch.cat([order, order.new_full((B, M, K - N), N)], dim=-1)
    first = order[..., :K]
    fill = torch.where(first[..., :1] < N, first[..., :1], 0)
    return torch.where(first < N, first, fill).int()
