"""ray_aabb_intersect: every backend against the reference, nerfacc's formula, hand-made cases."""

import math

import pytest
import torch

import pyengine
from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect
from pyengine.reference import ray_aabb_intersect as ref_mod

INF = math.inf
BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def one(o, d, box=BOX, backend="cpu", **kw):
    """(t_min, t_max, hit) of a single ray against a single box, as Python values."""
    f = lambda v: torch.tensor([v], dtype=torch.float32)
    t0, t1, hit = ray_aabb_intersect(f(o), f(d), f(box), backend=backend, **kw)
    return t0.item(), t1.item(), hit.item()


def random_case(N, M, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = (torch.rand(N, 3, generator=g, dtype=torch.float64) * 4 - 2).to(dtype)
    d = torch.randn(N, 3, generator=g, dtype=torch.float64)
    d = (d / d.norm(dim=-1, keepdim=True)).to(dtype)
    lo = torch.rand(M, 3, generator=g, dtype=torch.float64) * 2 - 1
    aabbs = torch.cat([lo, lo + torch.rand(M, 3, generator=g, dtype=torch.float64)], -1).to(dtype)
    # a few axis-aligned rays (parallel slabs), one on a slab plane, and a zero-size box
    if N > 6 and M > 1:
        d[:5, 1:] = 0
        d[5, 0] = 0
        o[5, 0] = aabbs[0, 0]
        aabbs[-1, 3:] = aabbs[-1, :3]
    return o, d, aabbs


def nerfacc_formula(o, d, aabbs):
    """The textbook slab test as nerfacc's PyTorch fallback states it (divide, then min/max)."""
    t1 = (aabbs[None, :, :3] - o[:, None]) / d[:, None]
    t2 = (aabbs[None, :, 3:] - o[:, None]) / d[:, None]
    t_min = torch.minimum(t1, t2).amax(-1)
    t_max = torch.maximum(t1, t2).amin(-1)
    return t_min, t_max, (t_max > t_min) & (t_max > 0)


# --------------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("planes", [(-INF, INF, INF), (0.0, 2.5, -1.0), (0.3, 0.3, 1e10)])
def test_matches_reference_bitwise(backend, dtype, planes):
    seed = torch.seed() % 2**31
    o, d, aabbs = random_case(301, 7, dtype, seed=seed)
    near, far, miss = planes
    got = ray_aabb_intersect(o, d, aabbs, near, far, miss, backend=backend)
    want = ref_mod.ray_aabb_intersect(o, d, aabbs, near, far, miss)
    for name, a, b in zip(("t_mins", "t_maxs", "hits"), got, want):
        assert a.dtype == b.dtype and a.shape == (301, 7), name
        bad = ~((a == b) | (a.isnan() & b.isnan()))
        assert not bad.any(), f"{backend} {name} (seed {seed}): {int(bad.sum())} of {a.numel()} differ"
    assert got[2].any() and not got[2].all()


def test_agrees_with_nerfacc_formula_on_generic_rays():
    """Away from touching/parallel cases our rules and nerfacc's reduce to the same slab test."""
    g = torch.Generator().manual_seed(1)
    o, d, aabbs = random_case(500, 9, torch.float64, seed=1)
    o, d = o[10:], torch.randn(490, 3, generator=g, dtype=torch.float64)
    aabbs = aabbs[:-1]
    t0, t1, hit = ray_aabb_intersect(o, d, aabbs, backend="cpu")
    n0, n1, nhit = nerfacc_formula(o, d, aabbs)
    assert torch.equal(hit, nhit)
    assert torch.allclose(t0[hit], n0[hit], rtol=1e-12, atol=1e-12)
    assert torch.allclose(t1[hit], n1[hit], rtol=1e-12, atol=1e-12)
    assert (t0[~hit] == INF).all() and (t1[~hit] == INF).all()
    # midpoints of hits lie in their boxes (nerfacc's own test)
    mid = ((t0 + t1) / 2).clamp(min=0)
    p = o[:, None] + mid[..., None] * d[:, None]
    inside = ((p >= aabbs[None, :, :3] - 1e-9) & (p <= aabbs[None, :, 3:] + 1e-9)).all(-1)
    assert inside[hit].all()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_empty_inputs(backend):
    o, d, aabbs = random_case(4, 3)
    for a, b, c in ((o[:0], d[:0], aabbs), (o, d, aabbs[:0])):
        t0, t1, hit = ray_aabb_intersect(a, b, c, backend=backend)
        assert t0.shape == t1.shape == hit.shape == (a.shape[0], c.shape[0]) and hit.dtype == torch.bool


# --------------------------------------------------------------------------------- hand-made cases


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_hand_made_cases(backend):
    # straight through along +x, and along -x
    assert one([-2, 0, 0], [1, 0, 0], backend=backend) == (1.0, 3.0, True)
    assert one([3, 0.5, 0], [-1, 0, 0], backend=backend) == (2.0, 4.0, True)
    # t is in units of |d|
    assert one([-2, 0, 0], [2, 0, 0], backend=backend) == (0.5, 1.5, True)
    # miss beside the box; miss_value is reported for both t's
    assert one([-2, 2, 0], [1, 0, 0], backend=backend) == (INF, INF, False)
    assert one([-2, 2, 0], [1, 0, 0], backend=backend, miss_value=-1.0) == (-1.0, -1.0, False)
    # box behind the origin
    assert one([2, 0, 0], [1, 0, 0], backend=backend) == (INF, INF, False)
    # starting inside: negative entry, clamped by a finite near plane
    assert one([0, 0, 0], [1, 0, 0], backend=backend) == (-1.0, 1.0, True)
    assert one([0, 0, 0], [1, 0, 0], backend=backend, near_plane=0.0) == (0.0, 1.0, True)
    # near / far clamp both t's; hits does not depend on the planes (as nerfacc)
    assert one([-2, 0, 0], [1, 0, 0], backend=backend, near_plane=1.5, far_plane=2.5) == (1.5, 2.5, True)
    assert one([-2, 0, 0], [1, 0, 0], backend=backend, near_plane=0.0, far_plane=0.5) == (0.5, 0.5, True)
    assert one([-2, 0, 0], [1, 0, 0], backend=backend, near_plane=5.0, far_plane=6.0) == (5.0, 5.0, True)
    # diagonal through a corner region
    t0, t1, hit = one([-2, -2, 0], [1, 1, 0], backend=backend)
    assert hit and (t0, t1) == (1.0, 3.0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_parallel_and_touching(backend):
    # parallel to the y and z slabs, inside them: the x slab decides
    assert one([-2, 0.3, -0.7], [1, 0, 0], backend=backend) == (1.0, 3.0, True)
    # parallel and outside a slab: miss, whatever the x slab says
    assert one([-2, 1.2, 0], [1, 0, 0], backend=backend)[2] is False
    # parallel and exactly on a slab plane: the boundary counts (nerfacc would give NaN)
    assert one([-2, 1.0, 0], [1, 0, 0], backend=backend) == (1.0, 3.0, True)
    assert one([-2, -1.0, 1.0], [1, -0.0, 0], backend=backend) == (1.0, 3.0, True)
    # grazing an edge (entry == exit): a hit, as nerfacc's kernel
    t0, t1, hit = one([-1, 0, 0], [1, 1, 0], box=[0, 0, -1, 1, 1, 1], backend=backend)
    assert hit and t0 == t1 == 1.0
    # zero direction: inside -> the whole line, outside -> miss
    assert one([0, 0, 0], [0, 0, 0], backend=backend) == (-INF, INF, True)
    assert one([0, 0, 3], [0, 0, 0], backend=backend)[2] is False
    # NaN anywhere misses
    assert one([float("nan"), 0, 0], [1, 0, 0], backend=backend)[2] is False


# --------------------------------------------------------------------------------- checks


def test_bad_inputs_raise_clear_errors():
    o, d, aabbs = random_case(5, 2)
    with pytest.raises(ValueError, match=r"rays_o must be \[N, 3\]"):
        ray_aabb_intersect(o[:, :2], d, aabbs)
    with pytest.raises(ValueError, match=r"rays_d must be \[5, 3\]"):
        ray_aabb_intersect(o, d[:4], aabbs)
    with pytest.raises(ValueError, match=r"aabbs must be \[M, 6\]"):
        ray_aabb_intersect(o, d, aabbs[:, :5])
    with pytest.raises(TypeError, match="rays_o must be float32 or float64"):
        ray_aabb_intersect(o.half(), d, aabbs)
    with pytest.raises(TypeError, match="share one dtype"):
        ray_aabb_intersect(o, d.double(), aabbs)
    with pytest.raises(TypeError, match="aabbs must be a torch.Tensor"):
        ray_aabb_intersect(o, d, BOX)
    with pytest.raises(ValueError, match="rays_o is on cpu but aabbs on meta"):
        ray_aabb_intersect(o, d, aabbs.to("meta"))
    with pytest.raises(ValueError, match="near_plane must be <= far_plane"):
        ray_aabb_intersect(o, d, aabbs, near_plane=2.0, far_plane=1.0)
    with pytest.raises(pyengine.BackendError, match="'cuda'.*CUDA tensors"):
        ray_aabb_intersect(o, d, aabbs, backend="cuda")


def test_not_differentiable_and_opcheck():
    o, d, aabbs = random_case(6, 3)
    t0, t1, _hit = ray_aabb_intersect(o.requires_grad_(), d, aabbs)
    assert not t0.requires_grad and not t1.requires_grad
    torch.library.opcheck(torch.ops.pyengine.ray_aabb_intersect.default,
                          (o.detach(), d, aabbs, 0.0, 10.0, -1.0, "cpu"),
                          test_utils=("test_schema", "test_faketensor"))


# --------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_reference(dtype):
    o, d, aabbs = random_case(4099, 13, dtype, seed=3)
    o, d, aabbs = o.cuda(), d.cuda(), aabbs.cuda()
    for near, far, miss in ((-INF, INF, INF), (0.0, 2.5, -1.0)):
        got = ray_aabb_intersect(o, d, aabbs, near, far, miss, backend="cuda")
        want = ref_mod.ray_aabb_intersect(o.cpu(), d.cpu(), aabbs.cpu(), near, far, miss)
        for name, a, b in zip(("t_mins", "t_maxs", "hits"), got, want):
            a = a.cpu()
            bad = ~((a == b) | (a.isnan() & b.isnan()))
            assert not bad.any(), f"cuda {name}: {int(bad.sum())} of {a.numel()} differ"
