"""OccupancyGrid: nerfacc's OccGridEstimator behaviour on pyengine's ops."""

import itertools

import pytest
import torch

from pyengine.nn.occupancy_grid import OccupancyGrid
from pyengine.reference import ray_march as ref_march

ROI = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
RADIUS = 0.5


def sphere_occ(x):
    return (x.norm(dim=-1, keepdim=True) < RADIUS).float()  # [P, 1], as nerfacc's occ_eval_fn


def cell_bounds(grid, lvl):
    """[X, Y, Z, 3] min corners and the cell size of one level."""
    lo, hi = grid.aabbs[lvl, :3], grid.aabbs[lvl, 3:]
    res = grid.resolution
    size = (hi - lo) / res
    idx = torch.stack(torch.meshgrid(*[torch.arange(r) for r in res.tolist()], indexing="ij"), -1)
    return lo + idx * size, size


def full_grid(levels=1, res=16):
    grid = OccupancyGrid(ROI, resolution=res, levels=levels)
    grid.binaries.fill_(True)
    grid.occs.fill_(1.0)
    return grid


def rays_along_x(n, seed=0, x0=-1.5):
    g = torch.Generator().manual_seed(seed)
    o = torch.cat([torch.full((n, 1), x0), torch.rand(n, 2, generator=g) - 0.5], -1)
    d = torch.tensor([[1.0, 0.0, 0.0]]).expand(n, 3).contiguous()
    return o, d


def test_buffers_match_nerfacc():
    grid = OccupancyGrid(ROI, resolution=(16, 8, 12), levels=2)
    assert set(grid.state_dict()) == {"resolution", "aabbs", "occs", "binaries"}
    assert grid.resolution.dtype == torch.int32 and grid.resolution.tolist() == [16, 8, 12]
    assert grid.occs.shape == (2 * 16 * 8 * 12,) and grid.binaries.shape == (2, 16, 8, 12)
    assert grid.binaries.dtype == torch.bool
    assert grid.aabbs.tolist() == [ROI, [-2.0, -2.0, -2.0, 2.0, 2.0, 2.0]]
    with pytest.raises(ValueError, match="roi_aabb must be"):
        OccupancyGrid([1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="resolution must be"):
        OccupancyGrid(ROI, resolution=(4, 4))
    with pytest.raises(ValueError, match="levels must be"):
        OccupancyGrid(ROI, levels=0)


def test_update_marks_the_sphere():
    torch.manual_seed(0)
    grid = OccupancyGrid(ROI, resolution=16, levels=2)
    for step in range(4):  # warm-up: every cell, at a fresh random point each time
        grid.update_every_n_steps(step, sphere_occ, n=1)
    for lvl in range(2):
        lo, size = cell_bounds(grid, lvl)
        corners = torch.stack([lo + size * torch.tensor(c, dtype=torch.float32)
                               for c in itertools.product((0, 1), repeat=3)], -2)  # [X, Y, Z, 8, 3]
        fully_inside = (corners.norm(dim=-1) < RADIUS).all(-1)
        nearest = torch.maximum(torch.minimum(torch.zeros(3), lo + size), lo)  # closest point to 0
        fully_outside = nearest.norm(dim=-1) >= RADIUS
        occupied = grid.binaries[lvl]
        assert fully_inside.any() and occupied[fully_inside].all(), f"level {lvl}: sphere cells missing"
        assert not occupied[fully_outside].any(), f"level {lvl}: cells outside the sphere occupied"
    # after warm-up: a quarter of the cells plus occupied ones; occupied cells stay occupied
    before = grid.binaries.clone()
    seen = []
    grid.update_every_n_steps(256, lambda x: seen.append(x.shape[0]) or sphere_occ(x), n=16)
    quarter = 16**3 // 4
    assert seen == [quarter + min(quarter, int(before[lvl].sum())) for lvl in range(2)]
    assert grid.binaries[before].all()
    # the period, and training mode only
    occs = grid.occs.clone()
    grid.update_every_n_steps(257, sphere_occ, n=16)
    assert torch.equal(grid.occs, occs)
    grid.eval()
    with pytest.raises(RuntimeError, match="training mode"):
        grid.update_every_n_steps(0, sphere_occ)


def test_update_threshold_and_ema():
    grid = OccupancyGrid(ROI, resolution=4)
    grid.update_every_n_steps(0, lambda x: torch.full((x.shape[0],), 0.5), n=1)
    assert (grid.occs == 0.5).all() and grid.binaries.all()  # 0.5 > min(mean 0.5, occ_thre 0.01)
    grid.update_every_n_steps(1, lambda x: torch.zeros(x.shape[0]), n=1, ema_decay=0.5)
    assert (grid.occs == 0.25).all()
    grid.update_every_n_steps(2, lambda x: torch.zeros(x.shape[0]), n=1, ema_decay=1 / 64)
    assert (grid.occs == 2**-8).all() and not grid.binaries.any()  # 2^-8 > min(mean 2^-8, 0.01) is false
    grid.occs[:3] = -1.0  # cells marked invisible keep their mark and leave the mean
    grid.update_every_n_steps(3, lambda x: (x[:, 0] > 0).float(), n=1)
    assert (grid.occs[:3] == -1).all()
    assert torch.equal(grid.binaries.flatten()[3:], grid.occs[3:] == 1.0)


def test_sampling_all_occupied_near_far_and_misses():
    grid = full_grid()
    o, d = rays_along_x(5, x0=-2.0)
    o = torch.cat([o, torch.tensor([[-2.0, 3.0, 0.0]])])  # misses the box
    d = torch.cat([d, d[:1]])
    idx, t0, t1 = grid.sampling(o, d, render_step_size=0.25)
    assert torch.equal(idx, torch.arange(5).repeat_interleave(8))
    assert t0[:8].tolist() == [1.0 + 0.25 * k for k in range(8)] and t1[7] == 3.0
    idx, t0, t1 = grid.sampling(o, d, near_plane=1.5, far_plane=2.4, render_step_size=0.25)
    assert t0[0] == 1.5 and t1[idx == 0].max().item() == pytest.approx(2.4)
    t_min, t_max = torch.full((6,), 1.25), torch.full((6,), 2.0)
    idx, t0, t1 = grid.sampling(o, d, t_min=t_min, t_max=t_max, render_step_size=0.25)
    assert t0[idx == 0].tolist() == [1.25, 1.5, 1.75]
    idx, t0, t1 = grid.sampling(o, d, render_step_size=0.25, stratified=True)
    first = t0[torch.searchsorted(idx, torch.arange(5))]
    assert ((first >= 1.0) & (first < 1.25)).all() and (idx < 5).all()


def test_sampling_skips_empty_space():
    grid = OccupancyGrid(ROI, resolution=16, levels=2)
    for step in range(3):
        grid.update_every_n_steps(step, sphere_occ, n=1)
    g = torch.Generator().manual_seed(1)
    o = torch.randn(300, 3, generator=g) * 3
    d = torch.randn(300, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    called = []
    idx, t0, t1 = grid.sampling(o, d, render_step_size=0.02, cone_angle=0.01,
                                sigma_fn=lambda *a: called.append(1) or torch.zeros_like(a[0]))
    assert called and idx.numel() > 0
    mid = o[idx] + d[idx] * ((t0 + t1) / 2)[:, None]
    assert ref_march.occupied(mid, grid.binaries, grid.aabbs[0]).all()
    assert (mid.norm(dim=-1) < RADIUS + 0.25).all()
    # same samples on the reference backend
    grid.backend = "reference"
    ref = grid.sampling(o, d, render_step_size=0.02, cone_angle=0.01)
    assert all(torch.equal(a, b) for a, b in zip(ref, (idx, t0, t1)))
    # an empty grid gives nothing, and the density function is not called
    grid.binaries.zero_()
    called.clear()
    idx, t0, t1 = grid.sampling(o, d, sigma_fn=lambda *a: called.append(1))
    assert idx.numel() == 0 and not called


def test_early_stop_behind_an_opaque_wall():
    grid = full_grid()
    o, d = rays_along_x(64)
    step = 0.01

    def mids(idx, t0, t1):
        return (o[idx] + d[idx] * ((t0 + t1) / 2)[:, None])[:, 0]

    all_idx, all_t0, all_t1 = grid.sampling(o, d, render_step_size=step)
    assert (mids(all_idx, all_t0, all_t1) > 0.5).any()

    def sigma_fn(t0, t1, ray_indices):
        return torch.where(mids(ray_indices, t0, t1) > 0, 1e3, 0.0)  # sigma * dt = 10 per step

    def alpha_fn(t0, t1, ray_indices):
        return (mids(ray_indices, t0, t1) > 0).float()

    for kw in ({"sigma_fn": sigma_fn}, {"alpha_fn": alpha_fn}):
        idx, t0, t1 = grid.sampling(o, d, render_step_size=step, **kw)
        x = mids(idx, t0, t1)
        # everything in front of the wall, plus the first sample inside it (T = 1 before it)
        assert (x < step).all(), x.max()
        assert (x > 0).sum() == 64
        assert (x <= 0).sum() == (mids(all_idx, all_t0, all_t1) <= 0).sum()
    # alpha_thre drops transparent samples (the threshold is min(alpha_thre, mean occupancy))
    idx, t0, t1 = grid.sampling(o, d, render_step_size=step, alpha_fn=alpha_fn, alpha_thre=0.5)
    assert idx.numel() == 64 and (mids(idx, t0, t1) > 0).all()
    with pytest.raises(ValueError, match="sigma_fn must return"):
        grid.sampling(o, d, render_step_size=step, sigma_fn=lambda t0, t1, r: t0[:, None])


def test_sampling_with_a_capacity_masks_what_compaction_drops():
    """capacity: the same samples as the data-sized path once the zero-length entries (padding,
    early-stopped and transparent samples) are left out; wanted counts the marcher's samples."""
    grid = full_grid()
    o, d = rays_along_x(64, seed=3)
    step = 0.01

    def mids(idx, t0, t1):
        return (o[idx] + d[idx] * ((t0 + t1) / 2)[:, None])[:, 0]

    def sigma_fn(t0, t1, ray_indices):
        return torch.where(mids(ray_indices, t0, t1) > 0, 1e3, 0.0)

    def alpha_fn(t0, t1, ray_indices):
        return (mids(ray_indices, t0, t1) > 0).float()

    marched = grid.sampling(o, d, render_step_size=step)[0].numel()
    for kw in ({}, {"sigma_fn": sigma_fn}, {"alpha_fn": alpha_fn, "alpha_thre": 0.5}):
        want = grid.sampling(o, d, render_step_size=step, **kw)
        S = want[0].numel()
        # masked in place (march_capacity = capacity), or packed from a larger march into S + 5
        for cap in ({"capacity": marched + 50}, {"capacity": S + 5, "march_capacity": marched + 50}):
            idx, t0, t1, counts = grid.sampling(o, d, render_step_size=step, **cap, **kw)
            assert idx.shape == (cap["capacity"],) and counts.tolist() == [marched, S], (kw, cap)
            assert (idx[1:] >= idx[:-1]).all()
            real = t1 > t0
            for a, b in zip((idx[real], t0[real], t1[real]), want):
                assert torch.equal(a, b), (kw, cap)
            if "march_capacity" in cap:  # packed: the kept samples first, then padding
                assert real[:S].all() and not real[S:].any() and (idx[S:] == 63).all()
    # packing into too few slots keeps the first kept samples
    want = grid.sampling(o, d, render_step_size=step, sigma_fn=sigma_fn)
    idx, t0, t1, counts = grid.sampling(o, d, render_step_size=step, sigma_fn=sigma_fn, capacity=10,
                                        march_capacity=marched)
    assert torch.equal(idx, want[0][:10]) and torch.equal(t0, want[1][:10]) and int(counts[1]) == want[0].numel()
    # a capacity below the need keeps the first rays whole (counts[1]: what was marched and kept)
    idx, t0, t1, counts = grid.sampling(o, d, render_step_size=step, capacity=marched // 2)
    assert counts.tolist() == [marched, marched // 2]
    full = grid.sampling(o, d, render_step_size=step)
    assert torch.equal(idx, full[0][:marched // 2]) and torch.equal(t0, full[1][:marched // 2])
    assert grid.sampling(o[:0], d[:0], render_step_size=step, capacity=7)[0].numel() == 0
    with pytest.raises(ValueError, match="capacity must be None or an int >= 0"):
        grid.sampling(o, d, render_step_size=step, capacity=-3)
    with pytest.raises(ValueError, match="march_capacity needs capacity"):
        grid.sampling(o, d, render_step_size=step, march_capacity=30)
