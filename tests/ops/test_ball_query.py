"""ball_query: PVCNN's rule by hand (strict radius, fill, none found), then every backend against the reference."""

import importlib

import pytest
import torch

import pyengine
from pyengine.ops.ball_query import ball_query
from tests.op_harness import Bad, Case, OpSuite, change

bq_mod = importlib.import_module("pyengine.ops.ball_query")
BACKENDS = ["reference", "cpu"]


def make(B, M, N, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(B, 3, M, generator=g, dtype=torch.float64).to(dtype).to(device)
    points = torch.rand(B, 3, N, generator=g, dtype=torch.float64).to(dtype).to(device)
    return centers, points


def line(xs, dtype=torch.float32):
    xs = torch.tensor(xs, dtype=dtype)
    return torch.stack([xs, torch.zeros_like(xs), torch.zeros_like(xs)])[None]


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_hand(backend):
    """Points on a line; centres at 0 and 10 with radius 1: the first K within in index order,
    the rest filled with the first found; a point at exactly the radius is out; none -> 0."""
    points = line([0.5, 3.0, -0.25, 1.0, 0.0, 0.9, 2.0])
    centers = line([0.0, 10.0, 2.5])
    got = ball_query(centers, points, 1.0, 3, backend=backend)
    assert got.dtype == torch.int32 and got.shape == (1, 3, 3)
    assert got.tolist() == [[[0, 2, 4], [0, 0, 0], [1, 6, 1]]]
    assert ball_query(centers, points, 1.0, 6, backend=backend).tolist()[0][0] == [0, 2, 4, 5, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_brute_force(backend):
    centers, points = make(2, 9, 50, torch.float64, seed=4)
    got = ball_query(centers, points, 0.4, 5, backend=backend).tolist()
    for b in range(2):
        for m in range(9):
            d2 = ((points[b] - centers[b, :, m:m + 1]) ** 2).sum(0)
            within = [n for n in range(50) if d2[n] < 0.16][:5]
            want = within + [within[0] if within else 0] * (5 - len(within))
            assert got[b][m] == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_point_clouds(backend):
    c, p = make(2, 0, 5)
    assert ball_query(c, p, 0.5, 4, backend=backend).shape == (2, 0, 4)
    c, p = make(2, 3, 0)
    assert ball_query(c, p, 0.5, 4, backend=backend).tolist() == [[[0] * 4] * 3] * 2
    assert ball_query(line([0.0]), line([0.1]), 0.5, 3, backend=backend).tolist() == [[[0, 0, 0]]]
    assert ball_query(line([0.0]), line([0.1]), 0.05, 1, backend=backend).tolist() == [[[0]]]


def test_low_precision_and_mixed_coordinates_compute_in_float32_or_float64():
    c, p = make(2, 8, 40, seed=2)
    want = ball_query(c, p, 0.3, 4, backend="reference")
    assert torch.equal(ball_query(c.half().float(), p.half(), 0.3, 4, backend="cpu"),
                       ball_query(c.half().float(), p.half().float(), 0.3, 4, backend="reference"))
    assert torch.equal(ball_query(c, p, 0.3, 4, backend="cpu"), want)
    assert torch.equal(ball_query(c.double(), p, 0.3, 4, backend="cpu"),
                       ball_query(c.double(), p.double(), 0.3, 4, backend="reference"))


# --------------------------------------------------------------------------------- the harness


def _case(B, M, N, radius, K):
    def make_(g, dtype, device):
        c, p = make(B, M, N, dtype, int(torch.randint(0, 2**31, (1,), generator=g)), device)
        return (c, p, radius, K), {}

    return Case(f"B{B}-M{M}-N{N}-r{radius}-K{K}", make_)


CASES = [_case(2, 31, 97, 0.3, 8), _case(1, 40, 123, 0.15, 32), _case(3, 5, 40, 2.0, 4), _case(1, 1, 1, 0.5, 1),
         _case(2, 0, 7, 0.5, 3), _case(2, 4, 0, 0.5, 3), _case(1, 7, 30, 0.0, 2)]


def _base(g, device):
    c, p = make(2, 4, 10, device=device)
    return (c, p, 0.5, 3), {}


BAD = [
    Bad("int-centers", change(0, lambda t: t.long()), TypeError, "centers_coords must be float16"),
    Bad("2d-points", change(1, lambda t: t[:, :2]), ValueError, r"points_coords must be \[B, 3, N\] with B = 2"),
    Bad("batch-mismatch", change(1, lambda t: t[:1]), ValueError, r"points_coords must be \[B, 3, N\] with B = 2"),
    Bad("negative-radius", change(2, lambda r: -1.0), ValueError, "radius must be a finite number >= 0"),
    Bad("nan-radius", change(2, lambda r: float("nan")), ValueError, "radius must be a finite number"),
    Bad("zero-neighbors", change(3, lambda k: 0), ValueError, r"num_neighbors must be an int >= 1, got 0"),
    Bad("meta-points", change(1, lambda t: t.to("meta")), ValueError, "points_coords is on meta"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(bq_mod.OP, ball_query, CASES, tol={torch.float32: (0, 0), torch.float64: (0, 0)}, base=_base,
                bad=BAD)
globals().update(SUITE.tests())
