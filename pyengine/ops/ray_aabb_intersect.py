"""``ray_aabb_intersect``: every ray against every axis-aligned box (nerfacc's semantics).

Layers: ``ray_aabb_intersect()`` checks inputs and picks a backend name, then calls the
registered op ``torch.ops.pyengine.ray_aabb_intersect``. Not differentiable (as in nerfacc): the
public function runs under ``torch.no_grad``. Backends: ``cuda``, ``cpu`` (pyengine._C) and
``reference`` (pyengine/reference/ray_aabb_intersect.py, the specification); all share the
signature ``fn(rays_o, rays_d, aabbs, near_plane, far_plane, miss_value)`` and return the same
bits for float32 and float64.
"""

from __future__ import annotations

import torch

from pyengine import _ext
from pyengine.ops import _dispatch
from pyengine.reference import ray_aabb_intersect as _ref

__all__ = ["ray_aabb_intersect"]

OP = "ray_aabb_intersect"
_DTYPES = (torch.float32, torch.float64)

_dispatch.register(OP, "reference", lambda device: None, lambda: _ref.ray_aabb_intersect)
_dispatch.register(OP, "cpu", lambda device: _dispatch.check_cpu_ext(device),
                   lambda: _ext.load().ray_aabb_intersect)
_dispatch.register(OP, "cuda", lambda device: _dispatch.check_cuda_ext(device),
                   lambda: _ext.load().ray_aabb_intersect)


@torch.library.custom_op("pyengine::ray_aabb_intersect", mutates_args=())
def _ray_aabb_intersect_op(rays_o: torch.Tensor, rays_d: torch.Tensor, aabbs: torch.Tensor,
                           near_plane: float, far_plane: float, miss_value: float,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fn = _dispatch.select(OP, rays_o.device, None if backend == "auto" else backend).impl()
    return fn(rays_o.contiguous(), rays_d.contiguous(), aabbs.contiguous(), near_plane, far_plane,
              miss_value)


@_ray_aabb_intersect_op.register_fake
def _(rays_o, rays_d, aabbs, *args):
    shape = (rays_o.shape[0], aabbs.shape[0])
    return rays_o.new_empty(shape), rays_o.new_empty(shape), rays_o.new_empty(shape, dtype=torch.bool)


def check_inputs(rays_o, rays_d, aabbs, near_plane, far_plane):
    """Raises TypeError / ValueError naming the argument when the inputs are malformed."""
    for name, t in (("rays_o", rays_o), ("rays_d", rays_d), ("aabbs", aabbs)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ray_aabb_intersect: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"ray_aabb_intersect: {name} must be float32 or float64, got {t.dtype}")
    if rays_o.dim() != 2 or rays_o.shape[1] != 3:
        raise ValueError(f"ray_aabb_intersect: rays_o must be [N, 3], got shape {tuple(rays_o.shape)}")
    if rays_d.shape != rays_o.shape:
        raise ValueError(f"ray_aabb_intersect: rays_d must be [{rays_o.shape[0]}, 3] like rays_o, "
                         f"got shape {tuple(rays_d.shape)}")
    if aabbs.dim() != 2 or aabbs.shape[1] != 6:
        raise ValueError(f"ray_aabb_intersect: aabbs must be [M, 6] (xmin, ymin, zmin, xmax, ymax, zmax), "
                         f"got shape {tuple(aabbs.shape)}")
    if not (rays_d.dtype == rays_o.dtype == aabbs.dtype):
        raise TypeError(f"ray_aabb_intersect: rays_o, rays_d and aabbs must share one dtype, got "
                        f"{rays_o.dtype}, {rays_d.dtype}, {aabbs.dtype}")
    for name, t in (("rays_d", rays_d), ("aabbs", aabbs)):
        if t.device != rays_o.device:
            raise ValueError(f"ray_aabb_intersect: rays_o is on {rays_o.device} but {name} on {t.device}")
    if not float(near_plane) <= float(far_plane):
        raise ValueError(f"ray_aabb_intersect: near_plane must be <= far_plane, got {near_plane} > {far_plane}")


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
    check_inputs(rays_o, rays_d, aabbs, near_plane, far_plane)
    name = _dispatch.select(OP, rays_o.device, backend).name
    return torch.ops.pyengine.ray_aabb_intersect(rays_o, rays_d, aabbs, float(near_plane), float(far_plane),
                                                 float(miss_value), name)
