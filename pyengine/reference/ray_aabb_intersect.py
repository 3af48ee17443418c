"""Pure-PyTorch ray / axis-aligned box intersection, the specification of ``ray_aabb_intersect``.

Semantics follow ``nerfacc.ray_aabb_intersect`` (its CUDA kernel; nerfacc >= 0.5). For ray ``n``
with origin ``o`` and direction ``d`` and box ``m`` with corners ``lo`` and ``hi``:

* Slab test per axis ``a`` with ``inv_a = 1 / d_a`` (a rounded reciprocal, then products, as
  nerfacc's kernel): ``t_lo = (lo_a - o_a) * inv_a``, ``t_hi = (hi_a - o_a) * inv_a``; the entry
  is ``t_lo`` and the exit ``t_hi`` when ``inv_a >= 0``, swapped otherwise.
* ``t_enter = max_a entry_a``, ``t_exit = min_a exit_a`` (starting from ``-inf`` / ``inf``).
* The pair hits iff ``t_enter <= t_exit`` (touching an edge or a corner counts, as in nerfacc's
  kernel) and ``t_exit > 0`` (a box wholly behind the origin misses).
* A hit reports ``t_min = clamp(t_enter, near_plane, far_plane)`` and
  ``t_max = clamp(t_exit, near_plane, far_plane)``; a miss reports ``miss_value`` for both. A ray
  that starts inside a box has a negative ``t_enter``, so its ``t_min`` is ``near_plane`` when
  that is finite. ``hits`` does not depend on the planes (as in nerfacc): a box wholly beyond
  ``far_plane`` is a hit with ``t_min = t_max = far_plane``.

Degenerate cases nerfacc leaves undefined, made explicit here: an axis with ``d_a == 0`` (either
sign) is a slab parallel to the ray: it keeps the whole line when ``lo_a <= o_a <= hi_a`` and
misses otherwise (nerfacc yields NaN when ``o_a`` lies exactly on the plane). A NaN anywhere in
an axis' entry or exit is a miss.
"""

from __future__ import annotations

import torch

__all__ = ["ray_aabb_intersect"]


def ray_aabb_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, aabbs: torch.Tensor,
                       near_plane: float = -float("inf"), far_plane: float = float("inf"),
                       miss_value: float = float("inf")):
    """Intersects every ray with every box (not differentiable).

    Args:
        rays_o: [N, 3] ray origins, float32 or float64.
        rays_d: [N, 3] ray directions (need not be normalised), same dtype.
        aabbs: [M, 6] boxes ``(xmin, ymin, zmin, xmax, ymax, zmax)``, same dtype.
        near_plane, far_plane: the reported t's are clamped to ``[near_plane, far_plane]``.
        miss_value: ``t_min`` and ``t_max`` of a pair that misses.

    Returns:
        ``(t_mins [N, M], t_maxs [N, M], hits [N, M] bool)``, t's in the inputs' dtype.

    Example:
        >>> o = torch.tensor([[-2.0, 0.0, 0.0]]); d = torch.tensor([[1.0, 0.0, 0.0]])
        >>> ray_aabb_intersect(o, d, torch.tensor([[-1.0, -1, -1, 1, 1, 1]]))
        (tensor([[1.]]), tensor([[3.]]), tensor([[True]]))
    """
    o = rays_o[:, None, :]  # [N, 1, 3]
    d = rays_d[:, None, :]
    lo = aabbs[None, :, :3]  # [1, M, 3]
    hi = aabbs[None, :, 3:]
    inv = torch.reciprocal(d)
    t_lo = (lo - o) * inv  # [N, M, 3]
    t_hi = (hi - o) * inv
    forward = inv >= 0
    entry = torch.where(forward, t_lo, t_hi)
    exit_ = torch.where(forward, t_hi, t_lo)
    parallel = (d == 0).expand_as(entry)
    miss = torch.where(parallel, ~((lo <= o) & (o <= hi)), entry.isnan() | exit_.isnan()).any(-1)

    shape = entry.shape[:2]
    t_enter = torch.full(shape, -float("inf"), dtype=entry.dtype, device=entry.device)
    t_exit = torch.full(shape, float("inf"), dtype=entry.dtype, device=entry.device)
    for a in range(3):  # comparisons, so that a NaN never replaces a number (as the kernels)
        e = torch.where(parallel[..., a], t_enter, entry[..., a])
        x = torch.where(parallel[..., a], t_exit, exit_[..., a])
        t_enter = torch.where(e > t_enter, e, t_enter)
        t_exit = torch.where(x < t_exit, x, t_exit)
    hits = ~miss & (t_enter <= t_exit) & (t_exit > 0)

    def clamp(t):
        t = torch.where(t < near_plane, torch.full_like(t, near_plane), t)
        return torch.where(t > far_plane, torch.full_like(t, far_plane), t)

    fill = torch.full_like(t_enter, miss_value)
    return torch.where(hits, clamp(t_enter), fill), torch.where(hits, clamp(t_exit), fill), hits
