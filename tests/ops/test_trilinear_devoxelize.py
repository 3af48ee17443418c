"""trilinear_devoxelize: semantics by hand, clamping, determinism, then every backend against the reference."""

import pytest
import torch

import pyengine
from pyengine.ops import voxelize as vox
from pyengine.ops.voxelize import trilinear_devoxelize
from tests.op_harness import Bad, Case, OpSuite, change

BACKENDS = ["reference", "cpu"]


def make(B, C, N, R, dtype=torch.float32, seed=0, device="cpu", lo=-0.5, hi=None):
    """(grid, coords) with coordinates uniform in [lo, hi) (default: half a voxel beyond each bound)."""
    g = torch.Generator().manual_seed(seed)
    hi = R - 0.5 if hi is None else hi
    grid = torch.randn(B, C, R, R, R, generator=g, dtype=torch.float64).to(dtype).to(device)
    coords = (torch.rand(B, 3, N, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype).to(device)
    return grid, coords


def lookup(grid, coords, backend, up=None, **kw):
    grid, coords = grid.detach().clone().requires_grad_(), coords.detach().clone().requires_grad_()
    out = trilinear_devoxelize(grid, coords, grid.shape[2], backend=backend, **kw)
    up = torch.ones_like(out) if up is None else up
    return out, *torch.autograd.grad(out, (grid, coords), up)


# --------------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_hand(backend):
    """R = 2, grid value 4x + 2y + z + 1 (trilinear, so the lookup is exact inside the cube)."""
    ar = torch.arange(2.0)
    grid = (4 * ar[:, None, None] + 2 * ar[None, :, None] + ar[None, None, :] + 1)[None, None]
    coords = torch.tensor([[[0.25, 1.0, 0.0], [0.5, 0.0, 1.0], [0.75, 1.0, 0.5]]])
    out, g_grid, g_coords = lookup(grid, coords, backend)
    assert torch.allclose(out, torch.tensor([[[1 + 1 + 1 + 0.75, 1 + 4 + 1, 1 + 2 + 0.5]]]))
    # every point's weights sum to one; the first point's corner (1, 1, 1) gets 0.25 * 0.5 * 0.75
    assert torch.allclose(g_grid.sum(), torch.tensor(3.0)) and torch.isclose(g_grid[0, 0, 1, 1, 1],
                                                                             torch.tensor(0.25 * 0.5 * 0.75))
    # the gradient is the slope (4, 2, 1), except where a coordinate sits on the top bound: there
    # the upper corner is the lower one (zero slope along that axis)
    assert torch.allclose(g_coords, torch.tensor([[[4.0, 0.0, 4.0], [2.0, 2.0, 0.0], [1.0, 0.0, 1.0]]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_coordinates_beyond_the_bounds_are_clamped(backend):
    R = 4
    grid, inside = make(2, 3, 50, R, lo=0.0, hi=R - 1.0)
    inside[0, :, :4] = torch.tensor([[0.0, 3.0, 0.0, 3.0], [3.0, 0.0, 1.0, 2.0], [3.0, 3.0, 0.0, 0.0]])
    beyond = inside.clone()
    g = torch.Generator().manual_seed(1)
    shift = torch.randint(0, 2, inside.shape, generator=g).bool()
    far = torch.rand(inside.shape, generator=g) * 5 + 1e-3
    beyond = torch.where(shift & (inside == 0), -far, beyond)
    beyond = torch.where(shift & (inside == R - 1), R - 1 + far, beyond)
    assert (beyond != inside).sum() >= 3
    out_in, g_grid_in, _ = lookup(grid, inside, backend)
    out, g_grid, g_coords = lookup(grid, beyond, backend)
    assert torch.equal(out, out_in) and torch.equal(g_grid, g_grid_in)
    assert (g_coords[beyond != inside] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_point_clouds(backend):
    grid, coords = make(2, 3, 0, 3)
    out, g_grid, g_coords = lookup(grid, coords, backend)
    assert out.shape == (2, 3, 0) and not g_grid.any() and g_coords.shape == (2, 3, 0)
    grid = torch.tensor([[[[[5.0]]], [[[-1.0]]]]])  # R = 1: every point reads the only voxel
    out, g_grid, g_coords = lookup(grid, torch.tensor([[[0.3], [-2.0], [7.0]]]), backend)
    assert out.tolist() == [[[5.0], [-1.0]]] and g_grid.tolist() == [[[[[1.0]]], [[[1.0]]]]]
    assert not g_coords.any()


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reruns_are_bit_identical(backend, deterministic):
    grid, coords = make(2, 5, 3000, 3, seed=4)  # about 900 corner contributions per voxel
    up = torch.randn(2, 5, 3000, generator=torch.Generator().manual_seed(2))
    runs = [lookup(grid, coords, backend, up, deterministic=deterministic) for _ in range(3)]
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


def test_matches_grid_sample():
    """The same lookup as grid_sample (align_corners, border padding) with the axes reversed."""
    grid, coords = make(2, 4, 33, 5, dtype=torch.float64)
    out = trilinear_devoxelize(grid, coords, 5, backend="cpu")
    xyz = (coords.clamp(0, 4) / 4 * 2 - 1).transpose(1, 2).flip(-1)[:, :, None, None]  # (z, y, x) order
    want = torch.nn.functional.grid_sample(grid, xyz, align_corners=True, padding_mode="border")[..., 0, 0]
    assert torch.allclose(out, want, atol=1e-12)


# --------------------------------------------------------------------------------- the harness


def _case(B, C, N, R, dtypes=(torch.float32, torch.float64), **kw):
    def make_(g, dtype, device):
        grid, coords = make(B, C, N, R, dtype, int(torch.randint(0, 2**31, (1,), generator=g)), device, **kw)
        return (grid, coords, R), {}

    return Case(f"B{B}-C{C}-N{N}-R{R}", make_, dtypes=dtypes)


CASES = [_case(2, 5, 97, 4, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16)),
         _case(1, 3, 123, 2, lo=-3.0, hi=5.0), _case(3, 2, 40, 5), _case(1, 1, 1, 1), _case(2, 3, 0, 3),
         _case(2, 0, 7, 3), _case(1, 4, 10, 6)]


def _base(g, device):
    grid, coords = make(2, 3, 5, 4, device=device)
    return (grid, coords, 4), {}


BAD = [
    Bad("int-coords", change(1, lambda t: t.long()), TypeError, "coords must be float16"),
    Bad("int-grid", change(0, lambda t: t.long()), TypeError, "grid must be float16"),
    Bad("2d-coords", change(1, lambda t: t[:, :2]), ValueError, r"coords must be \[B, 3, N\] with B = 2"),
    Bad("batch-mismatch", change(1, lambda t: t[:1]), ValueError, r"coords must be \[B, 3, N\] with B = 2"),
    Bad("non-cubic-grid", change(0, lambda t: t[..., :3]), ValueError, r"grid must be \[B, C, R, R, R\]"),
    Bad("wrong-resolution", change(2, lambda r: 5), ValueError, r"with R = resolution = 5"),
    Bad("resolution-0", change(2, lambda r: 0), ValueError, r"resolution must be an int in \[1, 1290\], got 0"),
    Bad("meta-coords", change(1, lambda t: t.to("meta")), ValueError, "coords is on meta but grid is on cpu"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(vox.DEVOX_OP, trilinear_devoxelize, CASES, grads=(0, 1),
                tol={torch.float32: (1e-6, 1e-5), torch.float64: (1e-13, 1e-11), torch.float16: (1e-3, 0),
                     torch.bfloat16: (1e-2, 0)},
                base=_base, bad=BAD, gradcheck_case="B3-C2-N40-R5", compile_kwargs={"deterministic": False})
globals().update(SUITE.tests())
