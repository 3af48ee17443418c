import math

import pytest
import torch

from pyengine.data.shapeworld import (
    COLORS,
    SHAPES,
    Scene,
    SceneObject,
    caption,
    make_heldout_views,
    make_multiview_dataset,
    render,
    sample_scene,
    sample_surface_points,
    scene_sdf,
)
from pyengine.render.camera import generate_rays, orbit_cameras
from tests.helpers import assert_close

SIZE = 48


@pytest.fixture(scope="module")
def cams():
    return orbit_cameras(3, radius=4.0, elevation_deg=torch.tensor([5.0, 30.0, 60.0]), width=SIZE, height=SIZE,
                         start_azimuth_deg=20.0)


def test_sample_scene_deterministic():
    for seed in range(4):
        assert sample_scene(seed, n_objects=3) == sample_scene(seed, n_objects=3)
    scenes = [sample_scene(s) for s in range(12)]
    assert len({(sc.objects[0].shape, sc.objects[0].color) for sc in scenes}) > 4
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [sample_scene(g1) for _ in range(3)] == [sample_scene(g2) for _ in range(3)]
    only = sample_scene(7, shapes=["torus"], colors=["blue"], size_jitter=0.2)
    assert only.objects[0].shape == "torus" and only.objects[0].color == "blue" and only.objects[0].dims


def test_multi_object_layout():
    for seed in range(4):
        scene = sample_scene(seed, n_objects=3)
        objs = scene.objects
        assert len({(o.shape, o.color) for o in objs}) == 3
        for a in range(3):
            for b in range(a):
                gap = math.dist(objs[a].position, objs[b].position)
                assert gap > objs[a].bounding_radius() + objs[b].bounding_radius()


def test_sdf_is_a_distance():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4096, 3, generator=g) * 4 - 2).requires_grad_()
    for shape in SHAPES:
        scene = Scene.single(shape, yaw_deg=30.0, tilt_deg=20.0)
        (grad,) = torch.autograd.grad(scene_sdf(scene, x).sum(), x)
        assert_close(grad.norm(dim=-1), torch.ones(4096), 1e-4, 0, f"{shape}: eikonal |grad sdf| = 1")
        inside = scene_sdf(scene, torch.zeros(3)) < 0
        assert bool(inside) == (shape != "torus"), shape  # the torus's centre is its hole
        assert scene_sdf(scene, torch.tensor([0.0, 0.0, 1.5])) > 0


def test_render_deterministic_and_shapes(cams):
    scene = sample_scene(3, n_objects=2)
    a = render(scene, cams, spp=4)
    b = render(scene, cams, spp=4)
    for k in ("image", "mask", "depth", "normal"):
        assert torch.equal(a[k], b[k]), k
    assert a["image"].shape == (3, SIZE, SIZE, 3) and a["normal"].shape == (3, SIZE, SIZE, 3)
    assert a["mask"].shape == a["depth"].shape == (3, SIZE, SIZE)
    assert 0 <= a["image"].min() and a["image"].max() <= 1
    assert ((a["mask"] > 0) & (a["mask"] < 1)).any(), "supersampled edges are fractional"


def test_sphere_silhouette_and_depth():
    for d, r, size in ((4.0, 0.9, 65), (3.0, 0.5, 81)):
        cams = orbit_cameras(2, radius=d, elevation_deg=torch.tensor([0.0, 50.0]), width=size, height=size)
        out = render(Scene.single("sphere", "blue", dims={"radius": r}), cams)
        # the silhouette of a sphere is a circle of angular radius asin(r / d)
        expected = float(cams.fy[0]) * r / math.sqrt(d * d - r * r)
        measured = (out["mask"].sum((1, 2)) / math.pi).sqrt()
        assert (measured - expected).abs().max() < 0.75, (measured, expected)
        c = size // 2
        assert_close(out["depth"][:, c, c], torch.full((2,), d - r), 1e-4, 0, "centre depth")
        # normals of a sphere at the origin are the hit points' directions
        o = cams.origins[:, None, None]
        _, rays_d = generate_rays(cams)
        hit = out["mask"] > 0
        p = (o + out["depth"][..., None] * rays_d)[hit]
        assert_close(p.norm(dim=-1), torch.full((len(p),), r), 3e-3, 0, "hit points on the sphere")
        assert_close(out["normal"][hit], p / p.norm(dim=-1, keepdim=True), 2e-2, 0, "normals")


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_renders(shape, cams):
    out = render(Scene.single(shape, "green", yaw_deg=30.0), cams)
    mask, depth = out["mask"], out["depth"]
    frac = mask.mean((1, 2))
    assert ((frac > 0.05) & (frac < 0.7)).all(), frac
    assert torch.equal(mask > 0, depth > 0), "mask and depth agree"
    assert (depth[mask > 0] > 2.5).all() and (depth[mask > 0] < 5.0).all()
    assert (out["image"][mask == 0] == 1).all(), "white background where empty"
    assert_close(out["normal"][mask > 0].norm(dim=-1), torch.ones(int((mask > 0).sum())), 1e-4, 0, "unit normals")
    assert (out["normal"][mask == 0] == 0).all()
    # nothing touches the border: the object is framed by the default orbit
    border = torch.cat([mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]], 1)
    assert (border == 0).all()


def test_colors(cams):
    for name in ("red", "blue", "yellow"):
        out = render(Scene.single("cube", name, yaw_deg=20.0), cams, background=(0.0, 0.0, 0.0))
        px = out["image"][out["mask"] > 0]
        lit = px[px.sum(-1) > px.sum(-1).median()]
        rgb = torch.tensor(COLORS[name])
        # every lit pixel is a positive multiple of the albedo: its chromaticity matches
        assert_close(lit / lit.sum(-1, keepdim=True), (rgb / rgb.sum()).expand_as(lit), 1e-4, 0, name)
    red = render(Scene.single("sphere", "red"), cams)
    px = red["image"][red["mask"] > 0]
    assert (px[:, 0] > 2 * px[:, 1]).all() and (px[:, 0] > 2 * px[:, 2]).all()
    headlight = render(Scene.single("sphere", "grey"), cams, light_dir="camera", ambient=0.0)
    assert headlight["image"][:, SIZE // 2, SIZE // 2].min() > 0.49  # facing the light: full albedo


def test_surface_points_on_surface():
    for shape in SHAPES:
        scene = Scene.single(shape, yaw_deg=40.0, tilt_deg=30.0, position=(0.1, -0.2, 0.3))
        pts, normals = sample_surface_points(scene, 3000, generator=0, return_normals=True)
        assert pts.shape == normals.shape == (3000, 3)
        assert scene_sdf(scene, pts).abs().max() < 1e-3, shape
        assert_close(normals.norm(dim=-1), torch.ones(3000), 1e-4, 0, "unit normals")
    multi = sample_scene(1, n_objects=3)
    pts = sample_surface_points(multi, 3000, generator=torch.Generator().manual_seed(0))
    assert scene_sdf(multi, pts).abs().max() < 1e-3
    assert torch.equal(pts, sample_surface_points(multi, 3000, generator=0))
    # uniform by area: a cube's six faces get about a sixth each
    cube = sample_surface_points(Scene.single("cube"), 6000, generator=1)
    faces = cube.abs().argmax(-1) * 2 + (cube.gather(1, cube.abs().argmax(-1, keepdim=True))[:, 0] < 0)
    counts = torch.bincount(faces, minlength=6).float()
    assert (counts / 1000 - 1).abs().max() < 0.15, counts
    # uniform by area: a sphere's points have mean zero and z spread evenly (Archimedes)
    sph = sample_surface_points(Scene.single("sphere"), 6000, generator=2)
    assert sph.mean(0).abs().max() < 0.05
    hist = torch.histc(sph[:, 2], bins=4, min=-0.9, max=0.9)
    assert (hist / 1500 - 1).abs().max() < 0.15, hist
    # a cone's side: the density grows linearly from the apex, so the mean radius is 2/3 of the base's
    cone = sample_surface_points(Scene.single("cone"), 6000, generator=3)
    side = cone[cone[:, 2] > -0.8 + 1e-4]
    assert abs(side[:, :2].norm(dim=-1).mean() / 0.8 - 2 / 3) < 0.02
    # a torus's outer half (further than the tube's centre line from the axis) holds 1/2 + r / (pi R)
    torus = sample_surface_points(Scene.single("torus"), 6000, generator=4)
    outer = (torus[:, :2].norm(dim=-1) > 0.7).float().mean()
    assert abs(outer - (0.5 + 0.28 / (math.pi * 0.7))) < 0.03, outer
    # objects get points in proportion to their areas
    two = Scene([SceneObject("sphere", position=(-1.5, 0, 0)), SceneObject("torus", position=(1.5, 0, 0))])
    _, which = scene_sdf(two, sample_surface_points(two, 6000, generator=5), return_index=True)
    share = which.float().mean()
    sphere_area, torus_area = 4 * math.pi * 0.9**2, 4 * math.pi**2 * 0.7 * 0.28
    expected = torus_area / (sphere_area + torus_area)
    assert abs(share - expected) < 0.03, (share, expected)


def test_caption():
    assert caption(Scene.single("cube", "red")) == "a red cube"
    assert caption(Scene.single("cone", "orange")) == "an orange cone"
    assert caption(Scene([SceneObject("torus", "purple"), SceneObject("sphere", "blue")])) == \
        "a purple torus and a blue sphere"
    three = Scene([SceneObject(s, "grey") for s in ("cube", "cone", "cylinder")])
    assert caption(three) == "a grey cube, a grey cone and a grey cylinder"
    assert caption(Scene.single("sphere", (0.1, 0.2, 0.3))) == "a sphere"
    for seed in range(5):
        o = sample_scene(seed).objects[0]
        assert caption(sample_scene(seed)).endswith(f"{o.color} {o.shape}")


def test_scene_validation():
    with pytest.raises(ValueError, match="shape"):
        SceneObject("pyramid")
    with pytest.raises(ValueError, match="color"):
        SceneObject("cube", "magenta")
    with pytest.raises(ValueError, match="dims"):
        SceneObject("cube", dims={"radius": 1.0})
    with pytest.raises(ValueError, match="object"):
        Scene([])


def test_multiview_dataset():
    scene = sample_scene(2)
    a = make_multiview_dataset(scene, n_views=6, width=24, height=20, seed=3, radius=(3.5, 4.5),
                               elevation_range_deg=(0.0, 45.0))
    b = make_multiview_dataset(scene, n_views=6, width=24, height=20, seed=3, radius=(3.5, 4.5),
                               elevation_range_deg=(0.0, 45.0))
    c = make_multiview_dataset(scene, n_views=6, width=24, height=20, seed=4)
    assert a["images"].shape == (6, 20, 24, 3) and a["masks"].shape == a["depths"].shape == (6, 20, 24)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["cameras"].c2w, b["cameras"].c2w)
    assert not torch.equal(a["cameras"].c2w, c["cameras"].c2w)
    assert a["caption"] == caption(scene) and len(a["cameras"]) == 6
    assert (a["masks"].sum((1, 2)) > 0).all()
    held = make_heldout_views(scene, n_views=4, width=24, height=20)
    assert held["images"].shape == (4, 20, 24, 3) and len(held["cameras"]) == 4
