"""``ray_aabb_intersect``: every ray against every axis-aligned box (nerfacc's semantics).

Not differentiable (as in nerfacc): the public function runs under ``torch.no_grad``. Kernels
(``pyengine.reference.ray_aabb_intersect``, ``pyengine._C``): ``ray_aabb_intersect(rays_o,
rays_d, aabbs, near_plane, far_plane, miss_value)``; they return the same bits for float32 and
float64.
"""

from __future__ import annotations

import torch

from pyengine.ops._define import F32_F64, T, check, define
from pyengine.reference import ray_aabb_intersect as _ref

__all__ = ["ray_aabb_intersect"]


def _fake(rays_o, rays_d, aabbs, *args):
    shape = (rays_o.shape[0], aabbs.shape[0])
    return rays_o.new_empty(shape), rays_o.new_empty(shape), rays_o.new_empty(shape, dtype=torch.bool)


OP = define("ray_aabb_intersect", "(Tensor rays_o, Tensor rays_d, Tensor aabbs, float near_plane, float far_plane, "
            "float miss_value) -> (Tensor, Tensor, Tensor)", fake=_fake, reference=_ref, cpu=True, cuda=True)


@torch.no_grad()
def ray_aabb_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, aabbs: torch.Tensor,
                       near_plane: float = -float("inf"), far_plane: float = float("inf"),
                       miss_value: float = float("inf"), *, backend: str | None = None):
    """Intersects every ray with every axis-aligned box, as ``nerfacc.ray_aabb_intersect``.

    Slab test; a pair hits when the slabs overlap (touching included) and the exit lies in front
    of the origin. Hits report their entry and exit t clamped to ``[near_plane, far_plane]`` (a
    ray starting inside a box gets ``t_min = near_plane``); misses report ``miss_value``. See
    ``pyengine.reference.ray_aabb_intersect`` for the exact rules, parallel rays included.

    Args:
        rays_o: [N, 3] origins, float32 or float64.
        rays_d: [N, 3] directions (t is measured in units of ``|d|``), same dtype.
        aabbs: [M, 6] boxes ``(xmin, ymin, zmin, xmax, ymax, zmax)``, same dtype.
        near_plane, far_plane: clamp range of the reported t's (``near_plane <= far_plane``).
        miss_value: t reported for a pair that misses.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        ``(t_mins [N, M], t_maxs [N, M], hits [N, M] bool)``. Not differentiable.

    Example:
        >>> o = torch.tensor([[0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
        >>> d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        >>> t0, t1, hit = ray_aabb_intersect(o, d, torch.tensor([[-1.0, -1, -1, 1, 1, 1]]), near_plane=0.0)
        >>> t0[:, 0].tolist(), t1[:, 0].tolist(), hit[:, 0].tolist()
        ([0.0, inf], [1.0, inf], [True, False])
    """
    check("ray_aabb_intersect", {"rays_o": T(F32_F64, "N 3"), "rays_d": T(F32_F64, "N 3"),
                                 "aabbs": T(F32_F64, "M 6")},
          {"rays_o": rays_o, "rays_d": rays_d, "aabbs": aabbs})
    if not (rays_d.dtype == rays_o.dtype == aabbs.dtype):
        raise TypeError(f"ray_aabb_intersect: rays_o, rays_d and aabbs must share one dtype, got "
                        f"{rays_o.dtype}, {rays_d.dtype}, {aabbs.dtype}")
    if not float(near_plane) <= float(far_plane):
        raise ValueError(f"ray_aabb_intersect: near_plane must be <= far_plane, got {near_plane} > {far_plane}")
    return OP(rays_o.contiguous(), rays_d.contiguous(), aabbs.contiguous(), float(near_plane), float(far_plane),
              float(miss_value), backend=backend)
