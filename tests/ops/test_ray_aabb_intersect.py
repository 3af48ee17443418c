"""ray_aabb_intersect: every backend against the reference, nerfacc's formula, hand-made cases."""

import math

import pytest
import torch

import pyengine
from pyengine.ops import ray_aabb_intersect as op_mod
from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect
from tests.op_harness import Bad, Case, OpSuite, change

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


# --------------------------------------------------------------------------------- semantics


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


# --------------------------------------------------------------------------------- the harness


def test_not_differentiable():
    o, d, aabbs = random_case(6, 3)
    t0, t1, _hit = ray_aabb_intersect(o.requires_grad_(), d, aabbs)
    assert not t0.requires_grad and not t1.requires_grad


def _case(N, M, planes, cpu=True):
    def make_(g, dtype, device):
        o, d, aabbs = random_case(N, M, dtype, seed=int(torch.randint(0, 2**31, (1,), generator=g)))
        return (o.to(device), d.to(device), aabbs.to(device), *planes), {}

    return Case(f"N{N}-M{M}-planes{planes}", make_, cpu=cpu)


PLANES = [(-INF, INF, INF), (0.0, 2.5, -1.0), (0.3, 0.3, 1e10)]
# bit-identical to the reference on every case (atol = rtol = 0)
CASES = ([_case(301, 7, p) for p in PLANES] + [_case(0, 3, PLANES[0]), _case(4, 0, PLANES[0]), _case(1, 1, PLANES[1])]
         + [_case(4099, 13, p, cpu=False) for p in PLANES[:2]])


def _base(g, device):
    o, d, aabbs = random_case(5, 2)
    return (o, d, aabbs), {}


BAD = [
    Bad("rays-o-2", change(0, lambda t: t[:, :2]), ValueError, r"rays_o must be \[N, 3\], got shape \(5, 2\)"),
    Bad("rays-d-short", change(1, lambda t: t[:4]), ValueError, r"rays_d must be \[N, 3\] with N = 5 \(from rays_o\)"),
    Bad("aabbs-5", change(2, lambda t: t[:, :5]), ValueError, r"aabbs must be \[M, 6\]"),
    Bad("half", change(0, lambda t: t.half()), TypeError, "rays_o must be float32 or float64"),
    Bad("mixed-dtypes", change(1, lambda t: t.double()), TypeError, "share one dtype"),
    Bad("list-box", change(2, lambda t: BOX), TypeError, "aabbs must be a torch.Tensor"),
    Bad("meta-box", change(2, lambda t: t.to("meta")), ValueError, "aabbs is on meta but rays_o is on cpu"),
    Bad("near-after-far", lambda a, k: (a, {"near_plane": 2.0, "far_plane": 1.0}), ValueError,
        "near_plane must be <= far_plane"),
    Bad("cuda-on-cpu", lambda a, k: (a, {"backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(op_mod.OP, ray_aabb_intersect, CASES, tol={torch.float32: (0, 0), torch.float64: (0, 0)},
                base=_base, bad=BAD)
globals().update(SUITE.tests())
