"""furthest_point_sample: semantics by hand, ties, edge sizes, then every backend against the reference."""

import importlib

import pytest
import torch

import pyengine
from pyengine.ops.furthest_point_sample import furthest_point_sample
from tests.op_harness import Bad, Case, OpSuite, change

fps_mod = importlib.import_module("pyengine.ops.furthest_point_sample")
BACKENDS = ["reference", "cpu"]


def cloud(B, N, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, N, generator=g, dtype=torch.float64).to(dtype).to(device)


def brute_force(coords, M):
    """The definition, point by point in float64 Python."""
    out = []
    for c in coords.double().tolist():
        pts = list(zip(*c))
        idx, dist = [0], [float("inf")] * len(pts)
        for _ in range(1, M):
            last = pts[idx[-1]]
            dist = [min(d, sum((a - b) ** 2 for a, b in zip(p, last))) for p, d in zip(pts, dist)]
            idx.append(max(range(len(pts)), key=lambda n: (dist[n], -n)))
        out.append(idx[:M])
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_hand(backend):
    """On a line at 0, 1, 5, 2: start at 0, then the farthest (5), then 2 (distance 2 from 0 and
    3 from 5, against 1 for the point at 1)."""
    coords = torch.tensor([[[0.0, 1.0, 5.0, 2.0], [0.0] * 4, [0.0] * 4]])
    idx = furthest_point_sample(coords, 4, backend=backend)
    assert idx.tolist() == [[0, 2, 3, 1]] and idx.dtype == torch.int32
    assert furthest_point_sample(coords, 0, backend=backend).shape == (1, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lowest_index(backend):
    """Corners of a square: 0 first, then the opposite corner 2 (unique), then 1 and 3 tie: 1.
    Duplicated points: once every distance is 0, index 0 again (the lowest)."""
    coords = torch.tensor([[[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0] * 4]], dtype=torch.float64)
    assert furthest_point_sample(coords, 4, backend=backend).tolist() == [[0, 2, 1, 3]]
    same = torch.ones(2, 3, 5)
    assert furthest_point_sample(same, 5, backend=backend).tolist() == [[0] * 5] * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_brute_force(backend):
    coords = cloud(3, 41, torch.float64, seed=3)
    assert furthest_point_sample(coords, 17, backend=backend).tolist() == brute_force(coords, 17)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_point_clouds(backend):
    assert furthest_point_sample(torch.zeros(2, 3, 0), 0, backend=backend).shape == (2, 0)
    assert furthest_point_sample(torch.zeros(0, 3, 4), 2, backend=backend).shape == (0, 2)
    assert furthest_point_sample(torch.randn(2, 3, 1), 1, backend=backend).tolist() == [[0], [0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_coordinates_sample_in_float32(backend):
    coords = cloud(2, 60, torch.float16, seed=1)
    got = furthest_point_sample(coords, 20, backend=backend)
    assert torch.equal(got, furthest_point_sample(coords.float(), 20, backend="reference"))


def test_reruns_are_identical():
    coords = cloud(2, 500, seed=7)
    runs = [furthest_point_sample(coords, 64, backend="cpu") for _ in range(3)]
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


# --------------------------------------------------------------------------------- the harness


def _case(B, N, M):
    def make_(g, dtype, device):
        return (cloud(B, N, dtype, int(torch.randint(0, 2**31, (1,), generator=g)), device), M), {}

    return Case(f"B{B}-N{N}-M{M}", make_)


CASES = [_case(2, 97, 31), _case(1, 123, 123), _case(3, 40, 1), _case(1, 1, 1), _case(2, 0, 0), _case(2, 7, 0),
         _case(0, 5, 3)]


def _base(g, device):
    return (cloud(2, 10, device=device), 4), {}


BAD = [
    Bad("int-coords", change(0, lambda t: t.long()), TypeError, "coords must be float16"),
    Bad("2d-coords", change(0, lambda t: t[:, :2]), ValueError, r"coords must be \[B, 3, N\]"),
    Bad("too-many", change(1, lambda m: 11), ValueError, r"num_samples must be an int \[0, 10\], got 11"),
    Bad("negative", change(1, lambda m: -1), ValueError, "num_samples must be an int"),
    Bad("float-count", change(1, lambda m: 4.0), ValueError, "num_samples must be an int"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(fps_mod.OP, furthest_point_sample, CASES, tol={torch.float32: (0, 0), torch.float64: (0, 0)},
                base=_base, bad=BAD)
globals().update(SUITE.tests())
