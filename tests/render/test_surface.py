"""render_mesh against analytic truth: a marching-tetrahedra sphere seen from two cameras has the
sphere's silhouette, normals and depth; colours come from the colour field at the surface point;
gradients reach the vertices through the silhouette (antialias) and the shading."""

import pytest
import torch

from pyengine.render.camera import generate_rays, orbit_cameras
from pyengine.render.surface import render_mesh, vertex_normals
from pyengine.render.tets import marching_tets, tet_grid
from tests.helpers import assert_close

R = 0.6


@pytest.fixture(scope="module")
def sphere():
    verts, tets = tet_grid(24, (-1, -1, -1, 1, 1, 1))
    v, f = marching_tets(verts, tets, verts.norm(dim=-1) - R)
    return v, f


def _truth(cams):
    """Analytic ray-sphere hits: mask [B, H, W], point, normal, depth along the viewing axis."""
    o, d = generate_rays(cams)
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - R * R
    disc = b * b - c
    mask = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    p = o + t[..., None] * d
    axis = -cams.c2w[:, :, 2]  # the camera looks down its -z
    depth = ((p - o) * axis[:, None, None, :]).sum(-1)
    return mask, p, p / R, depth


def test_silhouette_normals_and_depth_match_the_sphere(sphere):
    v, f = sphere
    cams = orbit_cameras(2, radius=3.0, elevation_deg=25.0, width=48, height=40)
    out = render_mesh(v, f, cams, shading="albedo", antialias=False)
    mask, p, n, depth = _truth(cams)
    hit = out["opacity"] > 0.5
    iou = (hit & mask).sum() / (hit | mask).sum()
    assert iou > 0.93, float(iou)
    both = hit & mask
    cos = (out["normal"][both] * n[both]).sum(-1)
    assert cos.mean() > 0.995 and cos.min() > 0.9, (float(cos.mean()), float(cos.min()))
    assert (out["depth"][both] - depth[both]).abs().max() < 0.05
    assert (out["normal"][~hit] == 0).all() and (out["depth"][~hit] == 0).all()
    bg = out["rgb"][~hit]
    assert_close(bg, torch.ones_like(bg), atol=0, rtol=0, what="background")


def test_colours_come_from_the_field_at_the_surface_point(sphere):
    v, f = sphere
    cams = orbit_cameras(1, radius=3.0, elevation_deg=10.0, width=32, height=32)
    field = lambda x: (x / (2 * R) + 0.5).clamp(0, 1)  # noqa: E731
    out = render_mesh(v, f, cams, field, shading="albedo", antialias=False)
    mask, p, _, _ = _truth(cams)
    both = (out["opacity"] > 0.5) & mask
    assert_close(out["rgb"][both], field(p[both]), atol=0.03, rtol=0, what="albedo at the surface")
    lights = torch.tensor([[0.0, 0.0, 1.0]])
    diffuse = render_mesh(v, f, cams, field, shading="diffuse", lights=lights, ambient=0.25, antialias=False)
    lam = (diffuse["normal"] * lights[:, None, None]).sum(-1, keepdim=True).clamp_min(0)
    assert_close(diffuse["rgb"][both], (out["rgb"] * (0.25 + 0.75 * lam))[both], atol=1e-5, rtol=0, what="diffuse")
    white = render_mesh(v, f, cams, field, shading="textureless", lights=lights, antialias=False)
    assert_close(white["rgb"][both], (0.1 + 0.9 * lam)[both].expand(-1, 3), atol=1e-5, rtol=0,
                 what="textureless: white albedo, default ambient 0.1")


def test_gradients_reach_the_vertices_through_the_outline():
    # antialias blends a pair of pixels only where the covering triangle owns the silhouette edge
    # (nvdiffrast's rule): triangles larger than pixels here, as in Magic3D's fine renders
    grid, tets = tet_grid(8, (-1, -1, -1, 1, 1, 1))
    v, f = marching_tets(grid, tets, grid.norm(dim=-1) - R)
    cams = orbit_cameras(1, radius=3.0, elevation_deg=0.0, width=64, height=64)
    vv = v.detach().clone().requires_grad_()
    out = render_mesh(vv, f, cams, shading="albedo", antialias=True)
    # growing the sphere darkens the image (grey object on white): d(sum rgb)/d(scale) < 0, and with flat
    # albedo only the antialiased outline can carry that derivative
    op = out["opacity"]
    assert ((op > 0) & (op < 1)).sum() > 20, "antialiased silhouette pixels"
    (out["rgb"].sum()).backward()
    radial = (vv.grad * v).sum()
    assert torch.isfinite(vv.grad).all() and radial < 0, float(radial)


def test_vertex_normals_of_a_tetrahedron_point_outwards():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])  # counter-clockwise from outside
    n = vertex_normals(v, f)
    centre = v.mean(0)
    assert ((n * (v - centre)).sum(-1) > 0).all()
    assert_close(n.norm(dim=-1), torch.ones(4), atol=1e-6, rtol=0, what="unit")


def test_bad_input_is_named(sphere):
    v, f = sphere
    cams = orbit_cameras(1, width=8, height=8)
    with pytest.raises(ValueError, match="shading"):
        render_mesh(v, f, cams, shading="phong")
    with pytest.raises(ValueError, match="lights"):
        render_mesh(v, f, cams, shading="diffuse")
    with pytest.raises(ValueError, match="verts"):
        render_mesh(v[:, :2], f, cams, shading="albedo")
    with pytest.raises(ValueError, match="faces"):
        render_mesh(v, f[:, :2], cams, shading="albedo")
