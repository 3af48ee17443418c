"""Value checks run once per unchanged tensor (pyengine/ops/_checked.py): what a producer made or
what already passed is not read back again, an in-place write brings the check back (and its
error), and a mark for one size says nothing about another."""

from __future__ import annotations

import gc

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pyengine.ops import _checked
from pyengine.ops.antialias import antialias, antialias_topology
from pyengine.ops.ball_query import ball_query
from pyengine.ops.composite import composite, pack_info
from pyengine.ops.furthest_point_sample import furthest_point_sample
from pyengine.ops.grouping import gather, grouping
from pyengine.ops.rasterize import interpolate, rasterize
from pyengine.ops.ray_march import ray_march
from pyengine.ops.voxelize import avg_voxelize
from tests.ops._raster_cases import make_mesh

# The reductions that a value check ends in (``bool(x.any())``, ``.all()``, ``nonzero``): the ops'
# own kernels run as one pyengine:: operator and dispatch none of them at this level.
_CHECK_OPS = {"aten::any", "aten::all", "aten::nonzero"}


class _Checks(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in _CHECK_OPS:
            self.seen.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def checks(fn, *args, **kwargs):
    with _Checks() as mode:
        out = fn(*args, **kwargs)
    return out, mode.seen


@pytest.fixture(autouse=True)
def fresh():
    _checked.clear()
    yield
    _checked.clear()


# ----------------------------------------------------------------------------- the registry


def test_mark_is_per_key_and_per_version():
    t = torch.tensor([0, 1, 2])
    assert not _checked.passed(t, ("indices", 3))
    _checked.mark(t, ("indices", 3))
    assert _checked.passed(t, ("indices", 3)) and not _checked.passed(t, ("indices", 2))
    assert not _checked.passed(t.clone(), ("indices", 3))  # another tensor with the same values
    t.view(3)[1] = 7  # a write through a view bumps the shared version counter
    assert not _checked.passed(t, ("indices", 3))
    _checked.mark(t, ("indices", 8))
    assert _checked.passed(t, ("indices", 8)) and not _checked.passed(t, ("indices", 3))


def test_marks_do_not_keep_tensors_alive():
    t = torch.arange(4)
    _checked.mark(t, ("indices", 4))
    n = len(_checked._marks)
    del t
    gc.collect()
    assert len(_checked._marks) == n - 1


def test_inference_tensors_are_never_marked():
    with torch.inference_mode():
        t = torch.arange(4)
    _checked.mark(t, ("indices", 4))
    assert not _checked.passed(t, ("indices", 4))


# ------------------------------------------------------------------------------- composite


def _samples(S, g):
    t0 = torch.rand(S, generator=g)
    return t0, t0 + 0.1, torch.rand(S, generator=g) * 5


def test_composite_checks_a_packed_info_once_and_again_after_a_write():
    g = torch.Generator().manual_seed(0)
    t0, t1, sigma = _samples(7, g)
    info = torch.tensor([[0, 3], [3, 0], [3, 4]])
    _, seen = checks(composite, info, t0, t1, densities=sigma)
    assert seen  # the first call reads the flags back
    _, seen = checks(composite, info, t0, t1, densities=sigma)
    assert seen == []
    info[2, 1] = 9  # now past the 7 samples
    with pytest.raises(ValueError, match="beyond the 7 samples"):
        composite(info, t0, t1, densities=sigma)
    info[2, 1] = 4
    with pytest.raises(ValueError, match="beyond the 6 samples"):  # checked for 7 samples, not for 6
        composite(info, t0[:6], t1[:6], densities=sigma[:6])


def test_pack_info_and_ray_march_outputs_are_not_checked_again():
    g = torch.Generator().manual_seed(1)
    idx = torch.tensor([0, 0, 2, 2, 2])
    info, seen = checks(pack_info, idx, 4)
    assert seen  # ray_indices from the user: checked
    _, seen = checks(pack_info, idx, 4)
    assert seen == []
    t0, t1, sigma = _samples(5, g)
    _, seen = checks(composite, info, t0, t1, densities=sigma)
    assert seen == []

    R = 6
    rays_o = torch.tensor([[-2.0, 0.0, 0.0]]).repeat(R, 1) + 0.1 * torch.rand(R, 3, generator=g)
    rays_d = torch.tensor([[1.0, 0.0, 0.0]]).repeat(R, 1)
    grid = torch.rand(1, 8, 8, 8, generator=g) > 0.3
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    for capacity in (None, 11):
        out = ray_march(rays_o, rays_d, torch.ones(R), torch.full((R,), 3.0), grid, aabb, 0.05,
                        capacity=capacity, validate=False)
        info, ray_indices, t0, t1 = out[:4]
        assert t0.numel() > 0
        _, seen = checks(composite, info, t0, t1, densities=torch.ones_like(t0))
        assert seen == []
        _, seen = checks(pack_info, ray_indices, R)
        assert seen == []
    # no rays but a capacity: the padding names ray 0 of none, so it is not vouched for
    out = ray_march(rays_o[:0], rays_d[:0], torch.ones(0), torch.ones(0), grid, aabb, 0.05, capacity=3,
                    validate=False)
    with pytest.raises(ValueError, match=r"\[0, n_rays\)"):
        pack_info(out[1], 0)


# -------------------------------------------------------------------------------- point ops


def test_point_ops_trust_their_own_indices_and_check_the_users_once():
    g = torch.Generator().manual_seed(2)
    pts = torch.rand(2, 3, 40, generator=g)
    feats = torch.rand(2, 5, 40, generator=g)
    centres_idx = furthest_point_sample(pts, 8)
    centres, seen = checks(gather, pts, centres_idx)
    assert seen == []
    nbrs = ball_query(centres, pts, 0.4, 6)
    _, seen = checks(grouping, feats, nbrs)
    assert seen == []

    mine = torch.randint(0, 40, (2, 8, 6), generator=g)
    _, seen = checks(grouping, feats, mine)
    assert seen
    _, seen = checks(grouping, feats, mine)
    assert seen == []
    with pytest.raises(ValueError, match=r"\[0, N\) = \[0, 30\)"):  # fewer points: a new check
        grouping(feats[..., :30], mine.clamp(max=35))
    mine[1, 2, 3] = 40
    with pytest.raises(ValueError, match="must lie in"):
        grouping(feats, mine)
    # ball_query over no points fills index 0, which no cloud of 0 points has
    empty = ball_query(centres, pts[..., :0], 0.4, 2)
    with pytest.raises(ValueError, match="must lie in"):
        grouping(feats[..., :0], empty)


def test_voxel_coords_are_checked_once_per_resolution():
    g = torch.Generator().manual_seed(3)
    coords = torch.randint(0, 4, (1, 3, 20), generator=g)
    coords[0, 1, 5] = 3
    feats = torch.rand(1, 2, 20, generator=g)
    _, seen = checks(avg_voxelize, feats, coords, 4)
    assert seen
    _, seen = checks(avg_voxelize, feats, coords, 4)
    assert seen == []
    with pytest.raises(ValueError, match="must lie in"):
        avg_voxelize(feats, coords, 3)  # checked for 4, not for 3
    coords[0, 0, 0] = -1
    with pytest.raises(ValueError, match="must lie in"):
        avg_voxelize(feats, coords, 4)


# ---------------------------------------------------------------------------- rasterization


def test_a_mesh_is_checked_once_and_rasterize_vouches_for_its_ids():
    g = torch.Generator().manual_seed(4)
    pos, tri = make_mesh(g, B=1, dtype=torch.float32)
    rast, seen = checks(rasterize, pos, tri, (16, 16))
    assert seen  # the faces, once
    rast2, seen = checks(rasterize, pos, tri, (16, 16))
    assert seen == []
    attr = torch.rand(1, pos.shape[1], 3, generator=g)
    col, seen = checks(interpolate, attr, rast, tri)
    assert seen == []
    topology = antialias_topology(tri)  # built once per mesh, as nvdiffrast's topology hash
    _, seen = checks(antialias, col, rast, pos, tri, topology)
    assert seen == []

    rast2[0, 3, 4, 3] = tri.shape[0] + 5.0  # an id no triangle has
    with pytest.raises(ValueError, match=r"interpolate: rast\[..., 3\]"):
        interpolate(attr, rast2, tri)
    with pytest.raises(ValueError, match=r"antialias: rast\[..., 3\]"):
        antialias(col, rast2, pos, tri)
    with pytest.raises(ValueError, match="tri must hold vertex indices"):  # the faces against fewer vertices
        interpolate(attr[:, :3], rast, tri)
    tri[0, 0] = pos.shape[1]
    with pytest.raises(ValueError, match="tri must hold vertex indices"):
        rasterize(pos, tri, (16, 16))
