"""``ray_march``: fixed-step or cone-angle marching through a cascaded occupancy grid.

The replacement for nerfacc's ``traverse_grids`` marching path: the samples of every ray whose
midpoints fall in occupied cells, packed ray by ray. Layers: ``ray_march()`` checks inputs and
picks a backend name, then calls the registered op ``torch.ops.pyengine.ray_march``. Not
differentiable (t's carry no gradient; the public function runs under ``torch.no_grad``).

Backends: ``cuda`` and ``cpu`` (pyengine._C: a count pass, an exclusive scan with torch.cumsum,
a fill pass; one thread per ray) and ``reference`` (pyengine/reference/ray_march.py, the
specification). All share the signature
``fn(rays_o, rays_d, t_min, t_max, binaries, roi_aabb, step_size, cone_angle, jitter)`` and
return bit-identical samples (float32 throughout, same operation order; see the header comment
of csrc/include/pyengine/ray_march.h).
"""

from __future__ import annotations

import torch

from pyengine import _ext
from pyengine.ops import _dispatch
from pyengine.reference import ray_march as _ref

__all__ = ["ray_march"]

OP = "ray_march"

_dispatch.register(OP, "reference", lambda device: None, lambda: _ref.ray_march)
_dispatch.register(OP, "cpu", lambda device: _dispatch.check_cpu_ext(device), lambda: _ext.load().ray_march)
_dispatch.register(OP, "cuda", lambda device: _dispatch.check_cuda_ext(device), lambda: _ext.load().ray_march)


@torch.library.custom_op("pyengine::ray_march", mutates_args=())
def _ray_march_op(rays_o: torch.Tensor, rays_d: torch.Tensor, t_min: torch.Tensor, t_max: torch.Tensor,
                  binaries: torch.Tensor, roi_aabb: torch.Tensor, step_size: float, cone_angle: float,
                  jitter: torch.Tensor | None,
                  backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (packed_info [R, 2] int64, ray_indices [S] int64, t_starts [S], t_ends [S])."""
    fn = _dispatch.select(OP, rays_o.device, None if backend == "auto" else backend).impl()
    c = lambda t: None if t is None else t.contiguous()
    return fn(c(rays_o), c(rays_d), c(t_min), c(t_max), c(binaries), c(roi_aabb), step_size, cone_angle,
              c(jitter))


@_ray_march_op.register_fake
def _(rays_o, rays_d, t_min, t_max, binaries, roi_aabb, step_size, cone_angle, jitter, backend):
    S = torch.library.get_ctx().new_dynamic_size()  # the number of samples depends on the data
    R = rays_o.shape[0]
    return (rays_o.new_empty((R, 2), dtype=torch.int64), rays_o.new_empty((S,), dtype=torch.int64),
            rays_o.new_empty((S,)), rays_o.new_empty((S,)))


def check_inputs(rays_o, rays_d, t_min, t_max, binaries, roi_aabb, step_size, cone_angle, jitter):
    """Raises TypeError / ValueError naming the argument when the inputs are malformed.

    Value checks on tensors (``roi_aabb`` max > min, ``jitter`` in [0, 1)) read one small result
    back from the device (a sync on CUDA, which the op has anyway to size its outputs).
    """
    named = [("rays_o", rays_o), ("rays_d", rays_d), ("t_min", t_min), ("t_max", t_max),
             ("binaries", binaries), ("roi_aabb", roi_aabb)] + ([("jitter", jitter)] if jitter is not None else [])
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ray_march: {name} must be a torch.Tensor, got {type(t).__name__}")
        want = torch.bool if name == "binaries" else torch.float32
        if t.dtype != want:
            raise TypeError(f"ray_march: {name} must be {want}, got {t.dtype}")
        if t.device != rays_o.device:
            raise ValueError(f"ray_march: rays_o is on {rays_o.device} but {name} on {t.device}")
    if rays_o.dim() != 2 or rays_o.shape[1] != 3:
        raise ValueError(f"ray_march: rays_o must be [R, 3], got shape {tuple(rays_o.shape)}")
    R = rays_o.shape[0]
    if rays_d.shape != rays_o.shape:
        raise ValueError(f"ray_march: rays_d must be [{R}, 3] like rays_o, got shape {tuple(rays_d.shape)}")
    for name, t in (("t_min", t_min), ("t_max", t_max), ("jitter", jitter)):
        if t is not None and tuple(t.shape) != (R,):
            raise ValueError(f"ray_march: {name} must be [{R}] (one value per ray), got shape {tuple(t.shape)}")
    if binaries.dim() != 4 or min(binaries.shape) < 1:
        raise ValueError(f"ray_march: binaries must be [L, X, Y, Z] with every size >= 1, got shape "
                         f"{tuple(binaries.shape)}")
    if tuple(roi_aabb.shape) != (6,):
        raise ValueError(f"ray_march: roi_aabb must be [6] (xmin, ymin, zmin, xmax, ymax, zmax), got shape "
                         f"{tuple(roi_aabb.shape)}")
    if not float(step_size) > 0:
        raise ValueError(f"ray_march: step_size must be > 0, got {step_size}")
    if not float(cone_angle) >= 0:
        raise ValueError(f"ray_march: cone_angle must be >= 0, got {cone_angle}")
    flags = [(roi_aabb[3:] > roi_aabb[:3]).all()]
    if jitter is not None and jitter.numel() > 0:
        flags.append(((jitter >= 0) & (jitter < 1)).all())
    flags = torch.stack(flags).tolist()
    if not flags[0]:
        raise ValueError(f"ray_march: roi_aabb must have max > min on every axis, got {roi_aabb.tolist()}")
    if len(flags) > 1 and not flags[1]:
        raise ValueError(f"ray_march: jitter must lie in [0, 1), got values in "
                         f"[{jitter.min().item()}, {jitter.max().item()}]")


@torch.no_grad()
def ray_march(rays_o: torch.Tensor, rays_d: torch.Tensor, t_min: torch.Tensor, t_max: torch.Tensor,
              binaries: torch.Tensor, roi_aabb: torch.Tensor, step_size: float, cone_angle: float = 0.0,
              jitter: torch.Tensor | None = None, *, backend: str | None = None):
    """Marches rays through a cascaded occupancy grid and keeps the steps in occupied cells.

    Steps ``[t_k, min(t_k + dt(t_k), t_max)]`` from ``t_0 = t_min + jitter * dt(t_min)`` while
    ``t_k < t_max``, with ``dt(t) = clamp(t * cone_angle, step_size, 1e10)``; a step is a sample
    iff the grid is occupied at its midpoint. Level ``l`` of ``binaries`` covers ``roi_aabb``
    scaled by ``2^l`` about its centre, and a point uses the finest level that contains it
    (nerfacc's multi-level occupancy grid). Rays with non-finite or empty ``[t_min, t_max]``
    have no samples. Exact rules: ``pyengine.reference.ray_march``.

    Args:
        rays_o: [R, 3] float32 origins.
        rays_d: [R, 3] float32 directions (t is measured in units of ``|d|``).
        t_min, t_max: [R] float32 marching interval per ray (e.g. from ``ray_aabb_intersect``).
        binaries: [L, X, Y, Z] bool occupancy, level 0 covering ``roi_aabb``.
        roi_aabb: [6] float32 ``(xmin, ymin, zmin, xmax, ymax, zmax)`` with max > min.
        step_size: minimum step, > 0. cone_angle: >= 0; 0 gives fixed steps.
        jitter: optional [R] float32 in [0, 1), the first step's offset in units of ``dt(t_min)``
            (stratified sampling).
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        ``(packed_info [R, 2] int64 (start, count), ray_indices [S] int64, t_starts [S] float32,
        t_ends [S] float32)``, grouped by ray in ray order, marching order within a ray.

    Example:
        >>> grid = torch.ones(1, 8, 8, 8, dtype=torch.bool)
        >>> o, d = torch.tensor([[-2.0, 0.1, 0.2]]), torch.tensor([[1.0, 0.0, 0.0]])
        >>> info, idx, t0, t1 = ray_march(o, d, torch.tensor([1.0]), torch.tensor([3.0]), grid,
        ...                               torch.tensor([-1.0, -1, -1, 1, 1, 1]), step_size=0.5)
        >>> info.tolist(), t0.tolist(), t1.tolist()
        ([[0, 4]], [1.0, 1.5, 2.0, 2.5], [1.5, 2.0, 2.5, 3.0])
    """
    check_inputs(rays_o, rays_d, t_min, t_max, binaries, roi_aabb, step_size, cone_angle, jitter)
    name = _dispatch.select(OP, rays_o.device, backend).name
    return torch.ops.pyengine.ray_march(rays_o, rays_d, t_min, t_max, binaries, roi_aabb, float(step_size),
                                        float(cone_angle), jitter, name)
