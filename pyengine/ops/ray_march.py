"""``ray_march``: fixed-step or cone-angle marching through a cascaded occupancy grid.

The replacement for nerfacc's ``traverse_grids`` marching path: the samples of every ray whose
midpoints fall in occupied cells, packed ray by ray. Not differentiable (t's carry no gradient;
the public function runs under ``torch.no_grad``). Kernels (``pyengine.reference.ray_march``,
``pyengine._C``: a count pass, an exclusive scan, a fill pass bounded by each ray's count; one
thread per ray): ``ray_march(rays_o, rays_d, t_min, t_max, binaries, roi_aabb, step_size,
cone_angle, jitter, max_steps, capacity)``. All return bit-identical samples (float32 throughout, same
operation order; see the header comment of csrc/include/pyengine/ray_march.h).
"""

from __future__ import annotations

import torch

from pyengine.ops import _checked
from pyengine.ops._define import BOOL, F32, T, check, define
from pyengine.reference import ray_march as _ref

__all__ = ["ray_march", "DEFAULT_MAX_STEPS"]

DEFAULT_MAX_STEPS = _ref.MAX_STEPS


def _fake(rays_o, *args):
    capacity = args[-1]
    # data-sized: the number of samples depends on the data; fixed capacity: it is the capacity
    S = capacity if capacity >= 0 else torch.library.get_ctx().new_dynamic_size()
    R = rays_o.shape[0]
    return (rays_o.new_empty((R, 2), dtype=torch.int64), rays_o.new_empty((S,), dtype=torch.int64),
            rays_o.new_empty((S,)), rays_o.new_empty((S,)), rays_o.new_empty((), dtype=torch.int64))


OP = define("ray_march", "(Tensor rays_o, Tensor rays_d, Tensor t_min, Tensor t_max, Tensor binaries, "
            "Tensor roi_aabb, float step_size, float cone_angle, Tensor? jitter, int max_steps, int capacity) "
            "-> (Tensor, Tensor, Tensor, Tensor, Tensor)", fake=_fake, reference=_ref, cpu=True, cuda=True)

SPECS = {"rays_o": T(F32, "R 3"), "rays_d": T(F32, "R 3"), "t_min": T(F32, "R"), "t_max": T(F32, "R"),
         "binaries": T(BOOL, "L X Y Z"), "roi_aabb": T(F32, "6"), "jitter": T(F32, "R", optional=True)}


@torch.no_grad()
def ray_march(rays_o: torch.Tensor, rays_d: torch.Tensor, t_min: torch.Tensor, t_max: torch.Tensor,
              binaries: torch.Tensor, roi_aabb: torch.Tensor, step_size: float, cone_angle: float = 0.0,
              jitter: torch.Tensor | None = None, *, max_steps: int = DEFAULT_MAX_STEPS,
              capacity: int | None = None, validate: bool = True, backend: str | None = None):
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
        max_steps: at most this many steps are marched per ray, occupied or not (> 0); bounds
            the work of a ray with a huge ``[t_min, t_max]``. The default is far above what a
            scene of 1024 steps across needs.
        capacity: None: the outputs are sized by the data, which reads the total back from the
            device (one sync). An int >= 0: the outputs have exactly ``capacity`` entries and
            nothing is read back (for CUDA graphs and ``torch.compile`` without dynamic shapes).
            Rays are served in order: ray ``r`` keeps the first ``min(count_r, capacity -
            start_r)`` of its samples, and the entries past the kept total are padding (ray
            ``max(R - 1, 0)``, ``t_starts = t_ends = 0``: zero-length intervals that composite to
            nothing). A fifth output then says how many samples the rays wanted.
        validate: check the values of ``roi_aabb`` (max > min) and ``jitter`` (in [0, 1)),
            which reads one flag back from the device. Pass False in a training loop.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        ``(packed_info [R, 2] int64 (start, count), ray_indices [S] int64, t_starts [S] float32,
        t_ends [S] float32)``, grouped by ray in ray order, marching order within a ray. With a
        ``capacity``: ``S = capacity``, ``packed_info`` counts the kept samples only, and a fifth
        output ``wanted`` (0-d int64 on the device) holds the samples before the cut (``wanted >
        capacity``: some were cut).

    Example:
        >>> grid = torch.ones(1, 8, 8, 8, dtype=torch.bool)
        >>> o, d = torch.tensor([[-2.0, 0.1, 0.2]]), torch.tensor([[1.0, 0.0, 0.0]])
        >>> info, idx, t0, t1 = ray_march(o, d, torch.tensor([1.0]), torch.tensor([3.0]), grid,
        ...                               torch.tensor([-1.0, -1, -1, 1, 1, 1]), step_size=0.5)
        >>> info.tolist(), t0.tolist(), t1.tolist()
        ([[0, 4]], [1.0, 1.5, 2.0, 2.5], [1.5, 2.0, 2.5, 3.0])
    """
    check("ray_march", SPECS, {"rays_o": rays_o, "rays_d": rays_d, "t_min": t_min, "t_max": t_max,
                               "binaries": binaries, "roi_aabb": roi_aabb, "jitter": jitter})
    if min(binaries.shape) < 1:
        raise ValueError(f"ray_march: binaries must be [L, X, Y, Z] with every size >= 1, got shape "
                         f"{tuple(binaries.shape)}")
    if not float(step_size) > 0:
        raise ValueError(f"ray_march: step_size must be > 0, got {step_size}")
    if not float(cone_angle) >= 0:
        raise ValueError(f"ray_march: cone_angle must be >= 0, got {cone_angle}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"ray_march: max_steps must be an int >= 1, got {max_steps!r}")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0):
        raise ValueError(f"ray_march: capacity must be None or an int >= 0, got {capacity!r}")
    if validate:
        flags = [(roi_aabb[3:] > roi_aabb[:3]).all()]
        if jitter is not None and jitter.numel() > 0:
            flags.append(((jitter >= 0) & (jitter < 1)).all())
        flags = torch.stack(flags).tolist()
        if not flags[0]:
            raise ValueError(f"ray_march: roi_aabb must have max > min on every axis, got {roi_aabb.tolist()}")
        if len(flags) > 1 and not flags[1]:
            raise ValueError(f"ray_march: jitter must lie in [0, 1), got values in "
                             f"[{jitter.min().item()}, {jitter.max().item()}]")
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    out = OP(c(rays_o), c(rays_d), c(t_min), c(t_max), c(binaries), c(roi_aabb), float(step_size),
             float(cone_angle), c(jitter), int(max_steps), -1 if capacity is None else int(capacity),
             backend=backend)
    # in ray order and inside [0, S) and [0, R) by construction: what composite and pack_info check
    # (not the padding of a capacity with no rays, which names ray 0 of none)
    _checked.mark(out[0], ("packed_info", out[1].shape[0]))
    if rays_o.shape[0] > 0 or out[1].shape[0] == 0:
        _checked.mark(out[1], ("ray_indices", rays_o.shape[0]))
    return tuple(out) if capacity is not None else tuple(out[:4])
