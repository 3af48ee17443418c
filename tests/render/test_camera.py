import math

import pytest
import torch

from pyengine.render.camera import (
    Cameras,
    cameras_from_spherical,
    clip_matrices,
    generate_rays,
    look_at,
    orbit_cameras,
    orbit_params,
    project_clip,
    project_points,
    random_orbit_cameras,
    rays_for_pixels,
)
from tests.helpers import assert_close


def _point_to_ray_distance(p, o, d):
    """Distance from points p [..., 3] to the lines o + t d (d unit) [..., 3]."""
    v = p - o
    return torch.linalg.vector_norm(v - (v * d).sum(-1, keepdim=True) * d, dim=-1)


def test_cameras_container():
    cams = orbit_cameras(5, width=48, height=32)
    assert len(cams) == 5 and cams.c2w.shape == (5, 3, 4) and cams.fx.shape == (5,)
    one = cams[2]
    assert len(one) == 1 and torch.equal(one.c2w[0], cams.c2w[2])
    assert torch.equal(cams[-1].c2w[0], cams.c2w[4])
    assert torch.equal(cams[torch.tensor(3)].c2w[0], cams.c2w[3])
    sub = cams[torch.tensor([4, 0])]
    assert len(sub) == 2 and torch.equal(sub.fx, cams.fx[[4, 0]])
    assert len(cams[1:4]) == 3 and len(cams[cams.fx > 0]) == 5
    assert (sub.width, sub.height) == (48, 32)
    with pytest.raises(IndexError):
        cams[5]
    moved = cams.to("cpu", torch.float64)
    assert moved.dtype == torch.float64 and moved.device.type == "cpu"
    assert len(Cameras.cat([cams, sub])) == 7
    # scalars broadcast; 4x4 matrices accepted
    c = Cameras(torch.eye(4).expand(3, 4, 4), 50.0, 50.0, 16.0, 16.0, 32, 32)
    assert c.c2w.shape == (3, 3, 4) and c.cy.shape == (3,)
    with pytest.raises(ValueError, match="c2w"):
        Cameras(torch.eye(3)[None], 1.0, 1.0, 0.0, 0.0, 4, 4)
    with pytest.raises(ValueError, match="fx"):
        Cameras(torch.eye(4)[None].expand(2, 4, 4), torch.ones(3), 1.0, 0.0, 0.0, 4, 4)
    assert_close(orbit_cameras(2, fov_deg=40.0).fov_y_deg, torch.full((2,), 40.0), 1e-4, 0, "fov")


def test_generate_rays_unit_and_camera_frame():
    cams = orbit_cameras(3, width=31, height=17, elevation_deg=torch.tensor([0.0, 30.0, -20.0]))
    o, d = generate_rays(cams)
    assert o.shape == d.shape == (3, 17, 31, 3)
    assert_close(d.norm(dim=-1), torch.ones(3, 17, 31), 1e-6, 0, "unit directions")
    assert_close(o, cams.origins[:, None, None].expand_as(o), 0, 0, "origins")
    # in the camera frame: top-left pixel looks up-left (x < 0, y > 0), every ray looks down -z
    d_cam = torch.einsum("bkc,bhwk->bhwc", cams.c2w[:, :, :3], d)
    assert (d_cam[..., 2] < 0).all()
    assert (d_cam[:, 0, 0, 0] < 0).all() and (d_cam[:, 0, 0, 1] > 0).all()
    assert (d_cam[:, -1, -1, 0] > 0).all() and (d_cam[:, -1, -1, 1] < 0).all()


def test_center_pixel_ray_passes_through_target():
    target = torch.tensor([0.3, -0.2, 0.5])
    for size in (33, 64):  # odd: a pixel sits on the axis; even: the axis is between pixels
        cams = orbit_cameras(6, radius=3.0, elevation_deg=35.0, width=size, height=size, center=target.tolist())
        c = (size - 1) / 2
        idx = torch.arange(6)
        o, d = rays_for_pixels(cams, idx, torch.full((6,), c), torch.full((6,), c))
        dist = _point_to_ray_distance(target, o, d)
        assert dist.max() < 1e-5, dist
        if size % 2:
            _, d_full = generate_rays(cams)
            assert _point_to_ray_distance(target, o, d_full[:, int(c), int(c)]).max() < 1e-5


def test_rays_for_pixels_matches_generate_rays():
    g = torch.Generator().manual_seed(1)
    cams = random_orbit_cameras(4, g, width=23, height=19, fov_deg=(30.0, 60.0))
    o, d = generate_rays(cams)
    n = 97
    idx = torch.randint(0, 4, (n,), generator=g)
    i = torch.randint(0, 19, (n,), generator=g)
    j = torch.randint(0, 23, (n,), generator=g)
    o2, d2 = rays_for_pixels(cams, idx, i, j)
    assert_close(o2, o[idx, i, j], 1e-6, 0, "origins")
    assert_close(d2, d[idx, i, j], 1e-6, 0, "directions")
    # per-camera fractional grids through generate_rays agree with rays_for_pixels too
    ij = torch.rand(4, 5, 7, 2, generator=g) * 15
    _, d3 = generate_rays(cams, ij)
    cam = torch.arange(4)[:, None, None].expand(4, 5, 7).reshape(-1)
    _, d4 = rays_for_pixels(cams, cam, ij[..., 0].reshape(-1), ij[..., 1].reshape(-1))
    assert_close(d3.reshape(-1, 3), d4, 1e-6, 0, "fractional pixels")
    o5, d5 = rays_for_pixels(cams, torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0))
    assert o5.shape == d5.shape == (0, 3)
    with pytest.raises(ValueError, match="cam_idx"):
        rays_for_pixels(cams, torch.tensor([4]), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(TypeError, match="cam_idx"):
        rays_for_pixels(cams, torch.tensor([0.0]), torch.tensor([0]), torch.tensor([0]))


def test_project_points_inverts_rays():
    g = torch.Generator().manual_seed(2)
    cams = random_orbit_cameras(3, g, width=40, height=30)
    pts = torch.rand(50, 3, generator=g) * 2 - 1
    ij, z = project_points(cams, pts)
    assert ij.shape == (3, 50, 2) and (z > 0).all()
    cam = torch.arange(3).repeat_interleave(50)
    o, d = rays_for_pixels(cams, cam, ij[..., 0].reshape(-1), ij[..., 1].reshape(-1))
    assert _point_to_ray_distance(pts.repeat(3, 1), o, d).max() < 1e-5
    # the orbit centre projects to the image centre
    ij0, _ = project_points(cams, torch.zeros(1, 3))
    assert_close(ij0[:, 0], torch.tensor([[14.5, 19.5]]).expand(3, 2), 1e-4, 0, "centre")


def test_look_at_orthonormal():
    g = torch.Generator().manual_seed(3)
    eye = torch.randn(64, 3, generator=g) * 3
    target = torch.randn(64, 3, generator=g) * 0.5
    # include degenerate views straight down and straight up the default +z up axis
    eye[0], target[0] = torch.tensor([0.0, 0.0, 4.0]), torch.zeros(3)
    eye[1], target[1] = torch.tensor([0.0, 0.0, -4.0]), torch.zeros(3)
    c2w = look_at(eye, target)
    R = c2w[:, :, :3]
    assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(64, 3, 3), 1e-5, 0, "R^T R")
    assert_close(torch.linalg.det(R), torch.ones(64), 1e-5, 0, "det")
    assert_close(c2w[:, :, 3], eye, 0, 0, "position")
    forward = (target - eye) / (target - eye).norm(dim=-1, keepdim=True)
    assert_close(-R[:, :, 2], forward, 1e-5, 0, "camera -z looks at the target")
    assert (R[2:, 2, 1] >= -1e-6).all(), "camera +y leans towards world +z"
    assert (R[2:, :, 0] @ torch.tensor([0.0, 0.0, 1.0])).abs().max() < 1e-5, "right axis is horizontal"


def test_orbit_cameras_geometry():
    cams = orbit_cameras(8, radius=4.0, elevation_deg=20.0, center=(0.0, 0.0, 0.5), start_azimuth_deg=10.0)
    p = orbit_params(cams, center=(0.0, 0.0, 0.5))
    assert_close(p["radius"], torch.full((8,), 4.0), 1e-5, 0, "radius")
    assert_close(p["elevation_deg"], torch.full((8,), 20.0), 1e-3, 0, "elevation")
    assert_close(p["azimuth_deg"], 10.0 + 45.0 * torch.arange(8.0), 1e-3, 0, "azimuth")
    # azimuth 0 sits on +x, 90 on +y
    c = cameras_from_spherical(2.0, 0.0, torch.tensor([0.0, 90.0]))
    assert_close(c.origins, torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), 1e-6, 0, "eye")
    # the image's up is world +z: the top row of the centre column looks higher than the bottom
    _, d = generate_rays(cams)
    assert (d[:, 0, 32, 2] > d[:, -1, 32, 2]).all()
    el = torch.linspace(-60, 60, 8)
    assert_close(orbit_params(orbit_cameras(8, elevation_deg=el))["elevation_deg"], el, 1e-3, 0, "per-view elevation")


def test_random_orbit_cameras_ranges_and_determinism():
    def make(seed):
        return random_orbit_cameras(64, torch.Generator().manual_seed(seed), radius_range=(3.0, 5.0),
                                    elevation_range_deg=(-10.0, 60.0), azimuth_range_deg=(0.0, 180.0))

    a, b, c = make(0), make(0), make(1)
    assert torch.equal(a.c2w, b.c2w) and not torch.equal(a.c2w, c.c2w)
    p = orbit_params(a)
    assert ((p["radius"] > 3.0 - 1e-5) & (p["radius"] < 5.0 + 1e-5)).all()
    assert ((p["elevation_deg"] > -10.0 - 1e-3) & (p["elevation_deg"] < 60.0 + 1e-3)).all()
    assert (p["azimuth_deg"] < 180.0 + 1e-3).all()
    assert p["elevation_deg"].std() > 10.0
    fixed = random_orbit_cameras(4, torch.Generator().manual_seed(0), radius_range=4.0, elevation_range_deg=15.0)
    assert_close(orbit_params(fixed)["radius"], torch.full((4,), 4.0), 1e-5, 0, "fixed radius")
    assert math.isclose(float(fixed.fov_y_deg[0]), 40.0, abs_tol=1e-4)


def test_clip_matrices_put_points_on_their_pixels():
    # non-square, off-centre principal point: rows and columns must not be swapped or flipped
    c2w = look_at(torch.tensor([[3.0, -2.0, 1.5], [0.5, 4.0, -1.0]]))
    cams = Cameras(c2w, fx=torch.tensor([30.0, 45.0]), fy=torch.tensor([33.0, 41.0]), cx=torch.tensor([21.0, 18.5]),
                   cy=torch.tensor([12.0, 14.0]), width=40, height=27)
    pts = torch.rand(64, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) - 0.5
    ij, depth = project_points(cams, pts.float())
    clip = project_clip(cams, pts.float())
    X, Y = clip[..., 0] / clip[..., 3], clip[..., 1] / clip[..., 3]
    # the rasterizer's pixel (row r, column c) has its centre at ((2c + 1) / W - 1, (2r + 1) / H - 1)
    assert_close(X, (2 * ij[..., 1] + 1) / 40 - 1, atol=1e-5, rtol=0, what="column")
    assert_close(Y, (2 * ij[..., 0] + 1) / 27 - 1, atol=1e-5, rtol=0, what="row")
    assert_close(clip[..., 3], depth, atol=1e-5, rtol=0, what="w is the depth")
    zw = clip[..., 2] / clip[..., 3]
    near, far = 0.1, 100.0
    want = (far + near) / (far - near) - 2 * far * near / ((far - near) * depth)
    assert_close(zw, want, atol=1e-5, rtol=0, what="OpenGL depth")
    # a point on a camera's ray through pixel (i, j) lands on that pixel
    o, d = generate_rays(cams)
    p = o[1, 5, 7] + 2.5 * d[1, 5, 7]
    c = project_clip(cams, p[None])[1, 0]
    assert_close(torch.stack([c[0] / c[3], c[1] / c[3]]), torch.tensor([15 / 40 - 1, 11 / 27 - 1]), atol=1e-5, rtol=0,
                 what="pixel (5, 7)")
    with pytest.raises(ValueError, match="near"):
        clip_matrices(cams, near=0.0)
    with pytest.raises(ValueError, match="points must be"):
        project_clip(cams, torch.zeros(3, 5, 3))
