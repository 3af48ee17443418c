"""``OccupancyGrid``: nerfacc's ``OccGridEstimator`` on pyengine's ops (the nerfacc replacement path).

Same constructor, buffers (names, shapes, dtypes: state dicts load both ways), update rule and
``sampling`` signature as ``nerfacc.OccGridEstimator`` (nerfacc 0.5). Marching runs on
``ray_march`` instead of nerfacc's ``traverse_grids``; the differences are listed in
``sampling``'s docstring. ``mark_invisible_cells`` is not implemented.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_true

from pyengine.ops.composite import composite, pack_info
from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect
from pyengine.ops.ray_march import ray_march

__all__ = ["OccupancyGrid"]

def _enlarge_aabb(aabb: torch.Tensor, factor: float) -> torch.Tensor:
    center = (aabb[:3] + aabb[3:]) / 2
    extent = (aabb[3:] - aabb[:3]) / 2
    return torch.cat([center - extent * factor, center + extent * factor])


class OccupancyGrid(torch.nn.Module):
    """Multi-level binary occupancy grid for empty-space skipping (Instant-NGP, nerfacc).

    Level ``l`` covers ``roi_aabb`` scaled by ``2^l`` about its centre; all levels share one
    resolution. ``occs`` holds an exponential moving maximum of the occupancy (density times step)
    per cell and ``binaries`` its thresholding, refreshed by ``update_every_n_steps``.

    Args:
        roi_aabb: [6] ``(xmin, ymin, zmin, xmax, ymax, zmax)`` of level 0.
        resolution: cells per axis, an int or three ints. Default 128.
        levels: number of cascaded levels. Default 1.
        backend: force a backend for the ops ("cuda", "cpu", "reference"); default automatic.

    Buffers:
        ``resolution`` [3] int32, ``aabbs`` [levels, 6], ``occs`` [levels * X * Y * Z],
        ``binaries`` [levels, X, Y, Z] bool (cell ``(i, j, k)`` of level ``l`` at flat index
        ``l * X * Y * Z + (i * Y + j) * Z + k`` of ``occs``).

    Example:
        >>> grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=32)
        >>> for step in range(4):
        ...     grid.update_every_n_steps(step, lambda x: (x.norm(dim=-1) < 0.5).float(), n=1)
        >>> rays_o = torch.tensor([[-2.0, 0.0, 0.0]]); rays_d = torch.tensor([[1.0, 0.0, 0.0]])
        >>> ray_indices, t_starts, t_ends = grid.sampling(rays_o, rays_d, render_step_size=0.01)
        >>> bool(((t_starts + t_ends) / 2 > 1.45).all() and ((t_starts + t_ends) / 2 < 2.55).all())
        True
    """

    DIM = 3

    def __init__(self, roi_aabb, resolution=128, levels: int = 1, *, backend: str | None = None):
        super().__init__()
        if isinstance(resolution, int):
            resolution = [resolution] * self.DIM
        resolution = torch.as_tensor(resolution, dtype=torch.int32).reshape(-1)
        if resolution.shape != (self.DIM,) or (resolution < 1).any():
            raise ValueError(f"OccupancyGrid: resolution must be an int or {self.DIM} positive ints, "
                             f"got {resolution.tolist()}")
        roi_aabb = torch.as_tensor(roi_aabb, dtype=torch.float32).reshape(-1)
        if roi_aabb.shape != (2 * self.DIM,) or not (roi_aabb[3:] > roi_aabb[:3]).all():
            raise ValueError(f"OccupancyGrid: roi_aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with "
                             f"max > min, got {roi_aabb.tolist()}")
        if not (isinstance(levels, int) and levels >= 1):
            raise ValueError(f"OccupancyGrid: levels must be an int >= 1, got {levels!r}")
        self.levels = levels
        self.cells_per_lvl = int(resolution.prod().item())
        self.backend = backend
        aabbs = torch.stack([_enlarge_aabb(roi_aabb, 2**i) for i in range(levels)], 0)
        self.register_buffer("resolution", resolution)
        self.register_buffer("aabbs", aabbs)
        self.register_buffer("occs", torch.zeros(levels * self.cells_per_lvl))
        self.register_buffer("binaries", torch.zeros([levels] + resolution.tolist(), dtype=torch.bool))

    @property
    def device(self) -> torch.device:
        return self.aabbs.device

    @property
    def roi_aabb(self) -> torch.Tensor:
        return self.aabbs[0]

    # ----------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def sampling(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
                 sigma_fn: Callable | None = None, alpha_fn: Callable | None = None,
                 near_plane: float = 0.0, far_plane: float = 1e10,
                 t_min: torch.Tensor | None = None, t_max: torch.Tensor | None = None,
                 render_step_size: float = 1e-3, early_stop_eps: float = 1e-4, alpha_thre: float = 0.0,
                 stratified: bool = False, cone_angle: float = 0.0, capacity: int | None = None,
                 march_capacity: int | None = None):
        """Samples along rays, skipping empty cells and (given sigma_fn / alpha_fn) occluded space.

        Each ray is marched over its intersection with the coarsest level's box, clamped to
        ``[max(near_plane, t_min), min(far_plane, t_max)]``; a step is kept when its midpoint is in
        an occupied cell. With ``sigma_fn`` (or ``alpha_fn``) the samples are evaluated once more
        and dropped when ``alpha < min(alpha_thre, occs.mean())`` (only if ``alpha_thre > 0``) or
        when the transmittance before them is below ``early_stop_eps``, as nerfacc does.

        Differences from nerfacc, all within one step: the step lattice starts where the ray
        enters the grid (nerfacc's starts at the near plane); the last step of a ray is cut at
        its far end (nerfacc keeps whole steps whose midpoint is inside); stratified jitter
        offsets the first step by ``U[0, 1) * dt(t_min)`` (nerfacc: ``U[0, 1) * step``; equal
        when ``cone_angle = 0``).

        Args:
            rays_o, rays_d: [N, 3] origins and directions (float32; others are converted).
            sigma_fn: ``(t_starts, t_ends, ray_indices) -> sigmas [S]``, optional.
            alpha_fn: ``(t_starts, t_ends, ray_indices) -> alphas [S]``, optional (sigma_fn wins).
            near_plane, far_plane: marching range along every ray.
            t_min, t_max: optional [N] per-ray range, combined with the planes.
            render_step_size: minimum step. cone_angle: step growth with distance (0: fixed).
            early_stop_eps: transmittance below which samples are dropped.
            alpha_thre: opacity below which samples are dropped.
            stratified: jitter the first step of every ray (pass ``stratified=self.training``).
            capacity: None: as many samples as the rays have (reading the count back from the
                device sizes them; dropping samples sizes them once more). An int: exactly
                ``capacity`` samples and no device sync (static shapes, for CUDA graphs and
                ``torch.compile``): rays are served in order and cut where the capacity runs
                out (see ``ray_march``), the unused entries and the dropped samples become
                zero-length intervals (``t_ends = t_starts``), which composite to nothing, so
                the rendering equals the data-sized one whenever nothing is cut.
            march_capacity: with ``capacity``, the marcher's slots (default: ``capacity``). When
                larger, the samples that survive the early stop (and the alpha threshold) are
                packed into the ``capacity`` returned slots on the device (a prefix sum and a
                scatter, no sync), so the caller's field runs on ``capacity`` samples, not on
                every marched one: the static-shape form of the early-stop compaction.

        Returns:
            ``(ray_indices [S] int64, t_starts [S], t_ends [S])``, grouped by ray. Not differentiable.
            With ``capacity``, also ``counts``: a [2] int64 device tensor, the samples the marcher
            wanted (before its cut) and the marched samples that the early stop kept (before the
            packing's cut); ``counts[0] > march_capacity`` or ``counts[1] > capacity``: some were
            cut. Reading it syncs.
        """
        for name, v in (("capacity", capacity), ("march_capacity", march_capacity)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"OccupancyGrid.sampling: {name} must be None or an int >= 0, got {v!r}")
        if march_capacity is not None and capacity is None:
            raise ValueError("OccupancyGrid.sampling: march_capacity needs capacity (the slots returned)")
        rays_o = rays_o.to(torch.float32)
        rays_d = rays_d.to(torch.float32)
        n = rays_o.shape[0]
        near = torch.full((n,), float(near_plane), dtype=torch.float32, device=rays_o.device)
        far = torch.full((n,), float(far_plane), dtype=torch.float32, device=rays_o.device)
        if t_min is not None:
            near = torch.maximum(near, t_min.to(torch.float32))
        if t_max is not None:
            far = torch.minimum(far, t_max.to(torch.float32))
        t_enter, t_exit, _ = ray_aabb_intersect(rays_o, rays_d, self.aabbs[-1:], backend=self.backend)
        start = torch.maximum(t_enter[:, 0], near)  # a miss reports inf: no samples
        end = torch.minimum(t_exit[:, 0], far)
        jitter = torch.rand(n, device=rays_o.device) if stratified else None
        slots = march_capacity if march_capacity is not None else capacity
        # the grid's own box and torch.rand's jitter are valid: no value check (it would sync)
        marched = ray_march(
            rays_o, rays_d, start, end, self.binaries, self.aabbs[0], render_step_size, cone_angle, jitter,
            capacity=None if capacity is None else (slots if n > 0 else 0), validate=False, backend=self.backend)
        packed_info, ray_indices, t_starts, t_ends = marched[:4]

        # guard_or_true: no samples skips the density function; a traced (torch.compile) size that
        # is not known yet does not break the graph
        if ((alpha_thre > 0.0 or early_stop_eps > 0.0) and (sigma_fn is not None or alpha_fn is not None)
                and guard_or_true(ray_indices.numel() > 0)):
            # nerfacc's min(alpha_thre, mean occupancy), kept on the device (no sync)
            alpha_thre_t = self.occs.mean().clamp(max=alpha_thre)
            if capacity is not None:
                # the padding joins the last ray as zero-length samples: composite sees every entry
                packed_info = pack_info(ray_indices, n, validate=False)
            # transmittance and alphas from the fused compositing op (ray_march built packed_info)
            if sigma_fn is not None:
                sigmas = sigma_fn(t_starts, t_ends, ray_indices)
                if sigmas.shape != t_starts.shape:
                    raise ValueError(f"OccupancyGrid.sampling: sigma_fn must return [{t_starts.numel()}] "
                                     f"(one density per sample), got {tuple(sigmas.shape)}")
                res = composite(packed_info, t_starts, t_ends, densities=sigmas, validate=False)
            else:
                alphas = alpha_fn(t_starts, t_ends, ray_indices)
                if alphas.shape != t_starts.shape:
                    raise ValueError(f"OccupancyGrid.sampling: alpha_fn must return [{t_starts.numel()}] "
                                     f"(one opacity per sample), got {tuple(alphas.shape)}")
                res = composite(packed_info, t_starts, t_ends, alphas=alphas, validate=False)
            keep = res.transmittance >= early_stop_eps
            if alpha_thre > 0:
                keep &= res.alphas >= alpha_thre_t
            if capacity is None:
                kept = torch.nonzero(keep)[:, 0]  # the one sync that sizes the compacted samples
                ray_indices, t_starts, t_ends = ray_indices[kept], t_starts[kept], t_ends[kept]
            else:  # no compaction here: a dropped sample becomes zero-length (alpha 0), as if removed
                t_ends = torch.where(keep, t_ends, t_starts)
        if capacity is None:
            return ray_indices, t_starts, t_ends
        real = t_ends > t_starts  # marched and kept (padding and dropped samples are zero-length)
        counts = torch.stack([marched[4], real.sum()])
        if ray_indices.shape[0] != (capacity if n > 0 else 0):
            ray_indices, t_starts, t_ends = self._pack(real, ray_indices, t_starts, t_ends, capacity, n)
        return ray_indices, t_starts, t_ends, counts

    @staticmethod
    def _pack(keep, ray_indices, t_starts, t_ends, capacity: int, n_rays: int):
        """The entries where ``keep`` holds, in order, into ``capacity`` slots (the rest: padding on
        the last ray, zero-length at t = 0); entries past ``capacity`` are cut. No device sync: a
        prefix sum gives each kept entry its slot, the others go to a spare slot that is dropped."""
        pos = torch.cumsum(keep, 0) - 1
        dest = torch.where(keep & (pos < capacity), pos, capacity)
        out_idx = ray_indices.new_full((capacity + 1,), max(n_rays - 1, 0))
        out_t0 = t_starts.new_zeros(capacity + 1)
        out_t1 = t_ends.new_zeros(capacity + 1)
        out_idx[dest] = ray_indices
        out_t0[dest] = t_starts
        out_t1[dest] = t_ends
        return out_idx[:capacity], out_t0[:capacity], out_t1[:capacity]

    # ----------------------------------------------------------------------------- updates

    @torch.no_grad()
    def update_every_n_steps(self, step: int, occ_eval_fn: Callable, occ_thre: float = 1e-2,
                             ema_decay: float = 0.95, warmup_steps: int = 256, n: int = 16) -> None:
        """Updates the grid every ``n`` training steps (call it every step, in training mode).

        Args:
            step: current training step.
            occ_eval_fn: ``x [P, 3] -> occupancy [P, 1] or [P]`` (typically density * step size).
            occ_thre: upper bound of the binarisation threshold. Default 1e-2.
            ema_decay: decay of the moving maximum. Default 0.95.
            warmup_steps: before this step every cell is evaluated; afterwards a quarter of the
                cells uniformly plus up to as many occupied ones, per level. Default 256.
            n: update period. Default 16.
        """
        if not self.training:
            raise RuntimeError("OccupancyGrid.update_every_n_steps: call it only in training mode; "
                               "use _update() to update the grid during inference")
        if step % n == 0:
            self._update(step, occ_eval_fn, occ_thre, ema_decay, warmup_steps)

    def _cell_coords(self, indices: torch.Tensor) -> torch.Tensor:
        _, Y, Z = self.binaries.shape[1:]  # the resolution, read without a device sync
        return torch.stack([indices // (Y * Z), (indices // Z) % Y, indices % Z], -1)

    def _all_cells(self) -> list:
        return [torch.arange(self.cells_per_lvl, device=self.device)] * self.levels

    def _uniform_and_occupied_cells(self, n: int) -> list:
        out = []
        for lvl in range(self.levels):
            uniform = torch.randint(self.cells_per_lvl, (n,), device=self.device)
            occupied = torch.nonzero(self.binaries[lvl].flatten())[:, 0]
            if n < occupied.numel():
                occupied = occupied[torch.randint(occupied.numel(), (n,), device=self.device)]
            out.append(torch.cat([uniform, occupied]))
        return out

    @torch.no_grad()
    def _update(self, step: int, occ_eval_fn: Callable, occ_thre: float = 0.01, ema_decay: float = 0.95,
                warmup_steps: int = 256) -> None:
        """One update: ``occs = max(occs * ema_decay, occ(x))`` at a random point of each chosen cell
        (cells with ``occs < 0`` are kept as marked), then
        ``binaries = occs > min(mean(occs[occs >= 0]), occ_thre)``."""
        if step < warmup_steps:
            lvl_indices = self._all_cells()
        else:
            lvl_indices = self._uniform_and_occupied_cells(self.cells_per_lvl // 4)
        res = self.resolution.to(torch.float32)
        for lvl, indices in enumerate(lvl_indices):
            coords = self._cell_coords(indices)
            x = (coords + torch.rand(coords.shape, device=self.device)) / res  # [0, 1]^3 in the cell
            lo, hi = self.aabbs[lvl, :3], self.aabbs[lvl, 3:]
            x = lo + x * (hi - lo)
            occ = occ_eval_fn(x).reshape(-1).to(self.occs.dtype)
            cell_ids = lvl * self.cells_per_lvl + indices
            old = self.occs[cell_ids]
            self.occs[cell_ids] = torch.where(old < 0, old, torch.maximum(old * ema_decay, occ))
        valid = self.occs >= 0  # the mean of the unmarked cells, without a sync for the mask
        mean = torch.where(valid, self.occs, 0.0).sum() / valid.sum().clamp(min=1)
        thre = torch.clamp(mean, max=occ_thre)
        self.binaries = (self.occs > thre).view(self.binaries.shape)

    def extra_repr(self) -> str:
        return (f"roi_aabb={[round(v, 4) for v in self.aabbs[0].tolist()]}, "
                f"resolution={self.resolution.tolist()}, levels={self.levels}")
