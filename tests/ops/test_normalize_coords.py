"""normalize_coords: PVCNN's normalisation, the coincident-points guard, and its feed into the voxel ops."""

import pytest
import torch

from pyengine.ops.voxelize import avg_voxelize, normalize_coords, trilinear_devoxelize


def pvcnn_formula(points, R, eps):
    """PVCNN's Voxelization (normalize=True), written out."""
    c = points - points.mean(2, keepdim=True)
    c = c / (c.norm(dim=1, keepdim=True).max(dim=2, keepdim=True).values * 2.0 + eps) + 0.5
    c = torch.clamp(c * R, 0, R - 1)
    return c, torch.round(c).to(torch.int32)


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_matches_the_formula_and_the_farthest_point_sits_at_radius_half(eps):
    g = torch.Generator().manual_seed(0)
    points = torch.randn(3, 3, 50, generator=g, dtype=torch.float64) * 4 + 7
    R = 16
    coords, voxels = normalize_coords(points, R, eps=eps)
    want, want_vox = pvcnn_formula(points, R, eps)
    assert coords.dtype == torch.float64 and voxels.dtype == torch.int32
    assert torch.allclose(coords, want, atol=1e-12) and torch.equal(voxels, want_vox)
    assert ((coords >= 0) & (coords <= R - 1)).all() and ((voxels >= 0) & (voxels < R)).all()
    if eps == 0:  # unclamped, the farthest point is at distance R / 2 from the centre (R / 2, R / 2, R / 2)
        unclamped = (points - points.mean(2, keepdim=True))
        unclamped = unclamped / (unclamped.norm(dim=1, keepdim=True).amax(2, keepdim=True) * 2) * R
        assert torch.allclose(unclamped.norm(dim=1).amax(1), torch.full((3,), R / 2.0, dtype=torch.float64))


def test_coincident_points_land_at_the_centre():
    points = torch.tensor([1.5, -2.0, 3.0])[None, :, None].expand(2, 3, 5).clone().requires_grad_()
    coords, voxels = normalize_coords(points, 8)
    assert torch.isfinite(coords).all() and (coords == 4.0).all() and (voxels == 4).all()
    (g,) = torch.autograd.grad(coords.sum(), points)
    assert torch.isfinite(g).all()
    nan, _ = pvcnn_formula(points.detach(), 8, 0.0)
    assert nan.isnan().all()  # what the guard avoids
    c1, v1 = normalize_coords(points, 1)  # R = 1: everything in voxel 0
    assert (c1 == 0).all() and (v1 == 0).all()


def test_single_point_and_empty_clouds():
    coords, voxels = normalize_coords(torch.tensor([[[5.0], [6.0], [7.0]]]), 5)
    assert coords.tolist() == [[[2.5], [2.5], [2.5]]] and voxels.tolist() == [[[2], [2], [2]]]  # round half even
    coords, voxels = normalize_coords(torch.zeros(2, 3, 0), 4)
    assert coords.shape == (2, 3, 0) and voxels.shape == (2, 3, 0) and voxels.dtype == torch.int32


def test_gradient_flows_to_points():
    points = torch.randn(1, 3, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    points.requires_grad_()
    torch.autograd.gradcheck(lambda p: normalize_coords(p, 8, eps=1e-3)[0], (points,))


def test_feeds_the_voxel_ops():
    g = torch.Generator().manual_seed(2)
    points = torch.randn(2, 3, 64, generator=g)
    features = torch.randn(2, 4, 64, generator=g)
    coords, voxels = normalize_coords(points, 6)
    grid = avg_voxelize(features, voxels, 6)
    out = trilinear_devoxelize(grid, coords, 6)
    assert out.shape == (2, 4, 64) and torch.isfinite(out).all()


def test_bad_inputs():
    with pytest.raises(TypeError, match="points must be float16"):
        normalize_coords(torch.zeros(1, 3, 4, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match=r"points must be \[B, 3, N\]"):
        normalize_coords(torch.zeros(1, 2, 4), 4)
    with pytest.raises(ValueError, match=r"resolution must be an int in \[1, 1290\], got 0"):
        normalize_coords(torch.zeros(1, 3, 4), 0)
