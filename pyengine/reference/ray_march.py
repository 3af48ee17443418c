"""Pure-PyTorch occupancy-grid ray marching, the specification of ``ray_march``.

All arithmetic is float32, one rounding per operation in the order written below; the CPU and
CUDA kernels (csrc/include/pyengine/ray_march.h) perform the same operations in the same order,
so every backend returns bit-identical samples. Scalars ``step_size`` and ``cone_angle`` are
rounded to float32 first.

Marching, per ray ``r`` with origin ``o``, direction ``d``, interval ``[t_min, t_max]``:

* ``dt(t) = clamp(t * cone_angle, step_size, 1e10)`` (``cone_angle = 0``: fixed steps).
* A ray is marched only if ``t_min`` and ``t_max`` are finite and ``t_min < t_max``; otherwise it
  has no samples (so the ``inf`` that ``ray_aabb_intersect`` reports for a miss is skipped).
* ``t_0 = t_min + jitter_r * dt(t_min)`` (``jitter = None``: ``t_0 = t_min``);
  ``t_{k+1} = t_k + dt(t_k)`` while ``t_k < t_max``. The march also stops after a step that
  does not advance ``t`` in float32 (``t_{k+1} <= t_k``, far from the origin with tiny steps).
* Step ``k`` is the interval ``[t_k, e_k]`` with ``e_k = min(t_{k+1}, t_max)``; it becomes a
  sample iff the grid is occupied at its midpoint ``x = o + d * ((t_k + e_k) * 0.5)``.
* At most ``max_steps`` steps are marched per ray, occupied or not: steps ``k = 0 ..
  max_steps - 1`` (default ``MAX_STEPS = 2**20``; ``max_steps >= 1``). The cap bounds the work of
  a ray whatever its interval: ``t_max = 1e30`` with a tiny step would otherwise march until the
  step vanishes in float32, tens of millions of steps.

Occupancy at ``x`` (nerfacc's cascade: level ``l`` covers the roi box scaled by ``2^l`` about its
centre; all levels share one resolution ``(X, Y, Z)``):

* ``c = (lo + hi) * 0.5``, ``h = (hi - lo) * 0.5`` from ``roi_aabb = (lo, hi)``;
  ``u = (x - c) / h`` per axis.
* ``level`` = the smallest ``l`` in ``[0, L)`` with ``|u_a| < 2^l`` on every axis: nerfacc's
  rule ``floor(log2(max_a |u_a|)) + 1`` (``nerfacc.grid._query``), so a point exactly on the
  boundary of level ``l``'s box belongs to level ``l + 1``. No such level (outside the coarsest
  box, or NaN): empty.
* Cell along axis ``a``: ``i_a = floor(((u_a * 2^-level) * 0.5 + 0.5) * res_a)``, clamped to
  ``[0, res_a - 1]``; occupied iff ``binaries[level, i_x, i_y, i_z]``.

Outputs are grouped by ray in ray order and, within a ray, in marching order:
``packed_info[r] = (start, count)`` with ``start`` the exclusive prefix sum of the counts.

Fixed capacity (``capacity >= 0``; ``-1``: outputs sized by the data): the outputs have exactly
``capacity`` entries, so their size is known before the march and no count is read back.

* Ray ``r`` keeps the first ``min(count_r, max(capacity - start_r, 0))`` of its samples (a prefix
  of its march, ``start_r`` counted without the cap): the rays that come first are served first.
* ``packed_info`` holds the kept counts and their exclusive prefix sum (``start <= capacity``).
* Entries past the kept total are padding: ray index ``max(R - 1, 0)`` (so ``ray_indices`` stays
  sorted) and ``t_starts = t_ends = 0``, a zero-length interval that composites to nothing.
* ``wanted`` (the fifth output, a 0-d int64 tensor) is the number of samples the rays had before
  the cap: ``wanted > capacity`` means samples were cut. In data-sized mode it equals ``S``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DT_MAX", "MAX_STEPS", "occupied", "ray_march"]

DT_MAX = 1e10
MAX_STEPS = 1 << 20


def _f32(v: float) -> float:
    return float(np.float32(v))


def _dt(t: torch.Tensor, step_size: float, cone_angle: float) -> torch.Tensor:
    return torch.clamp(t * cone_angle, min=step_size, max=DT_MAX)


def occupied(x: torch.Tensor, binaries: torch.Tensor, roi_aabb: torch.Tensor) -> torch.Tensor:
    """Occupancy of the cascaded grid at points ``x`` [P, 3] float32 -> [P] bool."""
    L = binaries.shape[0]
    res = binaries.shape[1:]
    lo, hi = roi_aabb[:3], roi_aabb[3:]
    center = (lo + hi) * 0.5
    half = (hi - lo) * 0.5
    u = (x - center) / half  # [P, 3]
    a = u.abs()
    inside = torch.stack([(a < 2.0**lvl).all(-1) for lvl in range(L)], -1)  # [P, L], monotone in l
    level = L - inside.sum(-1)  # first level that contains the point; L if none (or NaN)
    found = level < L
    level = level.clamp(max=L - 1)
    inv_scale = torch.tensor([2.0**-lvl for lvl in range(L)], dtype=torch.float32, device=x.device)
    w = (u * inv_scale[level][:, None]) * 0.5 + 0.5
    flat = level
    for ax in range(3):
        i = torch.floor(w[:, ax] * float(res[ax])).to(torch.int64).clamp(0, res[ax] - 1)
        flat = flat * res[ax] + i
    return found & binaries.reshape(-1)[flat]


@torch.no_grad()
def ray_march(rays_o: torch.Tensor, rays_d: torch.Tensor, t_min: torch.Tensor, t_max: torch.Tensor,
              binaries: torch.Tensor, roi_aabb: torch.Tensor, step_size: float, cone_angle: float = 0.0,
              jitter: torch.Tensor | None = None, max_steps: int = MAX_STEPS, capacity: int = -1):
    """Marches rays through a cascaded occupancy grid; keeps the steps whose midpoint is occupied.

    Vectorised over rays with a Python loop over steps (rays drop out as they finish).

    Args:
        rays_o: [R, 3] float32 origins.
        rays_d: [R, 3] float32 directions (t is measured in units of ``|d|``).
        t_min, t_max: [R] float32 marching interval per ray.
        binaries: [L, X, Y, Z] bool occupancy, level 0 = the roi box.
        roi_aabb: [6] float32 ``(xmin, ymin, zmin, xmax, ymax, zmax)`` of level 0.
        step_size: minimum step (> 0). cone_angle: step growth with distance (>= 0).
        jitter: optional [R] float32 in [0, 1): offset of the first step, in units of ``dt(t_min)``.
        max_steps: at most this many steps per ray (occupied or not), >= 1.
        capacity: ``-1``: outputs sized by the data; ``>= 0``: exactly this many entries (see
            the module docstring: first rays first, then padding).

    Returns:
        ``(packed_info [R, 2] int64, ray_indices [S] int64, t_starts [S] float32, t_ends [S] float32,
        wanted [] int64)``, ``S = capacity`` when one is given.

    Example:
        >>> grid = torch.ones(1, 4, 4, 4, dtype=torch.bool)
        >>> o, d = torch.tensor([[-2.0, 0.1, 0.2]]), torch.tensor([[1.0, 0.0, 0.0]])
        >>> info, idx, t0, t1, wanted = ray_march(o, d, torch.tensor([1.0]), torch.tensor([3.0]), grid,
        ...                               torch.tensor([-1.0, -1, -1, 1, 1, 1]), 0.25)
        >>> info.tolist(), t0[:3].tolist()
        ([[0, 8]], [1.0, 1.25, 1.5])
    """
    if int(max_steps) < 1:
        raise ValueError(f"ray_march: max_steps must be >= 1, got {max_steps}")
    if int(capacity) < -1:
        raise ValueError(f"ray_march: capacity must be -1 (sized by the data) or >= 0, got {capacity}")
    R = rays_o.shape[0]
    dev = rays_o.device
    step, cone = _f32(step_size), _f32(cone_angle)
    ids = torch.arange(R, device=dev)
    live = torch.isfinite(t_min) & torch.isfinite(t_max) & (t_min < t_max)
    ids, o, d, t, tmax = ids[live], rays_o[live], rays_d[live], t_min[live], t_max[live]
    if jitter is not None:
        t = t + jitter[live] * _dt(t, step, cone)

    out_ids, out_t0, out_t1 = [], [], []
    for _ in range(int(max_steps)):  # step k of every live ray in iteration k
        keep = t < tmax
        if not bool(keep.all()):
            ids, o, d, t, tmax = ids[keep], o[keep], d[keep], t[keep], tmax[keep]
        if ids.numel() == 0:
            break
        t_next = t + _dt(t, step, cone)
        t_end = torch.where(t_next < tmax, t_next, tmax)
        t_mid = (t + t_end) * 0.5
        occ = occupied(o + d * t_mid[:, None], binaries, roi_aabb)
        out_ids.append(ids[occ])
        out_t0.append(t[occ])
        out_t1.append(t_end[occ])
        # no progress in float32: stop (the kernels break out of their loop the same way)
        t = torch.where(t_next > t, t_next, tmax)

    if out_ids:
        ray_indices = torch.cat(out_ids)
        order = torch.sort(ray_indices, stable=True).indices  # by ray, marching order within a ray
        ray_indices = ray_indices[order]
        t_starts, t_ends = torch.cat(out_t0)[order], torch.cat(out_t1)[order]
    else:
        ray_indices = torch.zeros(0, dtype=torch.int64, device=dev)
        t_starts = torch.zeros(0, dtype=torch.float32, device=dev)
        t_ends = torch.zeros(0, dtype=torch.float32, device=dev)
    counts = torch.bincount(ray_indices, minlength=R) if R > 0 else torch.zeros(0, dtype=torch.int64, device=dev)
    starts = torch.cumsum(counts, 0) - counts
    wanted = counts.sum()
    if int(capacity) >= 0:
        cap = int(capacity)
        kept = torch.minimum(counts, (cap - starts).clamp(min=0))
        rank = torch.arange(ray_indices.numel(), device=dev) - starts[ray_indices]  # position within its ray
        keep = rank < kept[ray_indices]
        n = int(keep.sum())
        pad = cap - n
        ray_indices = torch.cat([ray_indices[keep], ray_indices.new_full((pad,), max(R - 1, 0))])
        t_starts = torch.cat([t_starts[keep], t_starts.new_zeros(pad)])
        t_ends = torch.cat([t_ends[keep], t_ends.new_zeros(pad)])
        counts, starts = kept, torch.cumsum(kept, 0) - kept
    packed_info = torch.stack([starts, counts], -1)
    return packed_info, ray_indices, t_starts, t_ends, wanted
