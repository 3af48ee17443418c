"""avg_voxelize: semantics by hand, bounds, determinism, then every backend against the reference."""

import pytest
import torch

import pyengine
from pyengine.ops import voxelize as vox
from pyengine.ops.voxelize import avg_voxelize
from tests.helpers import assert_close
from tests.op_harness import Bad, Case, OpSuite, change

BACKENDS = ["reference", "cpu"]


def make(B, C, N, R, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, C, N, generator=g, dtype=torch.float64).to(dtype).to(device)
    coords = torch.randint(0, R, (B, 3, N), generator=g).to(device)
    return features, coords


# --------------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_hand(backend):
    """Two points share voxel (0, 1, 1) = 3, one sits alone at (1, 0, 1) = 5; R = 2."""
    f = torch.tensor([[[1.0, 4.0, 10.0], [2.0, -2.0, 0.5]]], requires_grad=True)
    c = torch.tensor([[[0, 1, 0], [1, 0, 1], [1, 1, 1]]], dtype=torch.int32)
    grid, idx, counts = avg_voxelize(f, c, 2, return_indices=True, backend=backend)
    want = torch.zeros(1, 2, 8)
    want[0, :, 3] = torch.tensor([5.5, 1.25])
    want[0, :, 5] = torch.tensor([4.0, -2.0])
    assert grid.shape == (1, 2, 2, 2, 2) and grid.dtype == torch.float32
    assert torch.equal(grid.reshape(1, 2, 8), want)
    assert idx.tolist() == [[3, 5, 3]] and idx.dtype == torch.int32
    assert counts.tolist() == [[0, 0, 0, 2, 0, 1, 0, 0]] and counts.dtype == torch.int32
    up = torch.arange(16.0).reshape(1, 2, 2, 2, 2)
    (gf,) = torch.autograd.grad(grid, f, up)
    assert torch.equal(gf, torch.tensor([[[1.5, 5.0, 1.5], [5.5, 13.0, 5.5]]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_coordinates_at_the_bounds_and_clamped_beyond(backend):
    R = 3
    f, _ = make(1, 2, 6, R)
    at = torch.tensor([[[0, 2, 0, 2, 0, 2], [0, 2, 2, 0, 0, 2], [0, 2, 0, 0, 2, 2]]])
    grid, idx, _ = avg_voxelize(f, at, R, return_indices=True, backend=backend)
    assert idx.tolist() == [[0, 26, 6, 18, 2, 26]]
    beyond = at.clone()
    beyond[0, 0, 1], beyond[0, 2, 2], beyond[0, 1, 5] = 7, -4, 2**40  # clamped to the same voxels
    with pytest.raises(ValueError, match=r"coords must lie in \[0, resolution\) = \[0, 3\); coords\[0, 0, 1\] = 7"):
        avg_voxelize(f, beyond, R, backend=backend)
    for coords in (beyond, beyond.clamp(-10, 10).int()):
        out = avg_voxelize(f, coords, R, validate=False, backend=backend)
        assert torch.equal(out, grid)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_point_clouds(backend):
    f, c = make(2, 3, 0, 4)
    f.requires_grad_()
    grid, idx, counts = avg_voxelize(f, c, 4, return_indices=True, backend=backend)
    assert grid.shape == (2, 3, 4, 4, 4) and not grid.any() and idx.shape == (2, 0) and not counts.any()
    (g,) = torch.autograd.grad(grid.sum(), f)
    assert g.shape == (2, 3, 0)
    f = torch.tensor([[[2.0], [-1.0]]], requires_grad=True)
    grid = avg_voxelize(f, torch.tensor([[[1], [0], [1]]]), 2, backend=backend)
    assert grid[0, :, 1, 0, 1].tolist() == [2.0, -1.0] and grid.abs().sum().item() == 3.0
    (g,) = torch.autograd.grad(grid.sum(), f)
    assert g.tolist() == [[[1.0], [1.0]]]
    assert avg_voxelize(f, torch.zeros(1, 3, 1, dtype=torch.int64), 1, backend=backend).tolist() == [[[[[2.0]]],
                                                                                                      [[[-1.0]]]]]


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reruns_are_bit_identical(backend, deterministic):
    f, c = make(2, 7, 3000, 3, seed=5)  # about 110 points per voxel
    f.requires_grad_()
    runs = []
    for _ in range(3):
        grid = avg_voxelize(f, c, 3, deterministic=deterministic, backend=backend)
        runs.append((grid, *torch.autograd.grad(grid, f, torch.ones_like(grid) * 0.3)))
    for grid, g in runs[1:]:
        assert torch.equal(grid, runs[0][0]) and torch.equal(g, runs[0][1])


def test_deterministic_default_follows_torch_and_the_environment(monkeypatch):
    monkeypatch.delenv("PYENGINE_DETERMINISTIC", raising=False)
    assert vox._deterministic(None) is False and vox._deterministic(True) is True
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert vox._deterministic(None) is True and vox._deterministic(False) is False
    finally:
        torch.use_deterministic_algorithms(before)
    monkeypatch.setenv("PYENGINE_DETERMINISTIC", "1")
    assert vox._deterministic(None) is True


def test_low_precision_features_keep_their_dtype():
    f, c = make(2, 3, 50, 2)
    for dtype in (torch.float16, torch.bfloat16):
        out = avg_voxelize(f.to(dtype), c, 2, backend="cpu")
        assert out.dtype == dtype
        assert_close(out.float(), avg_voxelize(f.to(dtype).float(), c, 2, backend="cpu").to(dtype).float(), 0, 0)


# --------------------------------------------------------------------------------- the harness


def _case(B, C, N, R, dtypes=(torch.float32, torch.float64)):
    def make_(g, dtype, device):
        f, c = make(B, C, N, R, dtype, int(torch.randint(0, 2**31, (1,), generator=g)), device)
        return (f, c.int() if N % 2 else c, R), {"return_indices": True}

    return Case(f"B{B}-C{C}-N{N}-R{R}", make_, dtypes=dtypes)


CASES = [_case(2, 5, 97, 4, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16)),
         _case(1, 3, 123, 2), _case(3, 2, 40, 5), _case(1, 1, 1, 1), _case(2, 3, 0, 3), _case(2, 0, 7, 3),
         _case(1, 4, 10, 6)]


def _base(g, device):
    f, c = make(2, 3, 5, 4, device=device)
    return (f, c, 4), {}


BAD = [
    Bad("float-coords", change(1, lambda t: t.float()), TypeError, "coords must be int32 or int64"),
    Bad("int-features", change(0, lambda t: t.long()), TypeError, "features must be float16"),
    Bad("2d-coords", change(1, lambda t: t[:, :2]), ValueError, r"coords must be \[B, 3, N\] with B = 2"),
    Bad("short-coords", change(1, lambda t: t[..., :4]), ValueError, r"coords must be \[B, 3, N\].*N = 5"),
    Bad("flat-features", change(0, lambda t: t[0]), ValueError, r"features must be \[B, C, N\]"),
    Bad("resolution-0", change(2, lambda r: 0), ValueError, r"resolution must be an int in \[1, 1290\], got 0"),
    Bad("resolution-float", change(2, lambda r: 4.0), ValueError, "resolution must be an int"),
    Bad("out-of-range", change(1, lambda t: t + 1), ValueError, r"coords must lie in \[0, resolution\) = \[0, 4\)"),
    Bad("meta-coords", change(1, lambda t: t.to("meta")), ValueError, "coords is on meta but features is on cpu"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(vox.AVG_OP, avg_voxelize, CASES, grads=(0,),
                tol={torch.float32: (1e-6, 1e-5), torch.float64: (1e-14, 1e-12), torch.float16: (1e-3, 0),
                     torch.bfloat16: (1e-2, 0)},
                base=_base, bad=BAD, gradcheck_case="B1-C4-N10-R6",
                compile_kwargs={"validate": False, "deterministic": False})
globals().update(SUITE.tests())
