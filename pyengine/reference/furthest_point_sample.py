"""Pure-PyTorch furthest point sampling, the specification of ``furthest_point_sample``.

PVCNN's rule: sample 0 is point 0; every point keeps its squared distance to the nearest sample
so far (``+inf`` before the first), and the next sample is the point farthest from the samples,
the lowest index among equally far points (``torch.argmax`` returns the first maximum).
"""

from __future__ import annotations

import torch

from pyengine.reference.points import dist2

__all__ = ["furthest_point_sample"]


def furthest_point_sample(coords: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Indices of ``num_samples`` furthest-point samples per cloud.

    Args:
        coords: [B, 3, N] point coordinates.
        num_samples: M in [0, N].

    Returns:
        [B, M] int32, starting with 0.

    Example:
        >>> coords = torch.tensor([[[0.0, 1.0, 5.0, 2.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
        >>> furthest_point_sample(coords, 3).tolist()
        [[0, 2, 3]]
    """
    B, _, N = coords.shape
    idx = torch.zeros(B, num_samples, dtype=torch.int64, device=coords.device)
    if num_samples == 0:
        return idx.int()
    dist = torch.full((B, N), float("inf"), dtype=coords.dtype, device=coords.device)
    last = idx[:, :1]
    for i in range(1, num_samples):
        centre = coords.gather(2, last[:, None].expand(B, 3, 1))
        dist = torch.minimum(dist, dist2(coords, centre)[:, :, 0])
        last = dist.argmax(dim=1, keepdim=True)
        idx[:, i:i + 1] = last
    return idx.int()
