"""The volume renderer on a real scene: an analytic ShapeWorld density through the occupancy grid,
ray marching and compositing. Backends agree on real samples, chunking changes nothing, and the
rendered silhouette and depth match the sphere-traced ShapeWorld render."""

import pytest
import torch

import pyengine
from pyengine.data import shapeworld
from pyengine.nn import OccupancyGrid
from pyengine.ops import _dispatch
from pyengine.ops.composite import composite
from pyengine.ops.ray_march import ray_march
from pyengine.render import orbit_cameras
from pyengine.render.camera import generate_rays
from pyengine.render.volume import render_image, render_rays
from tests.helpers import assert_close

HALF = 1.1
STEP = 2 * HALF * 3**0.5 / 256


class SceneField(torch.nn.Module):
    """Density of a ShapeWorld scene: a steep sigmoid of its SDF; albedo = the object's colour."""

    def __init__(self, scene, sharpness=400.0, peak=400.0):
        super().__init__()
        self.scene, self.sharpness, self.peak = scene, sharpness, peak
        self.color = torch.tensor(scene.objects[0].rgb)

    def density(self, x):
        return self.peak * torch.sigmoid(-shapeworld.scene_sdf(self.scene, x) * self.sharpness)

    def forward(self, x, with_normals=False):
        out = {"density": self.density(x), "albedo": self.color.expand(*x.shape[:-1], 3)}
        if with_normals:
            out["normal"] = torch.zeros_like(x)
        return out


@pytest.fixture(scope="module")
def scene_setup():
    scene = shapeworld.Scene.single("torus", "blue")
    field = SceneField(scene)
    grid = OccupancyGrid(torch.tensor([-HALF] * 3 + [HALF] * 3), resolution=48)
    grid.train()
    for step in range(2):
        grid.update_every_n_steps(step, lambda x: field.density(x) * STEP, warmup_steps=10, n=1)
    grid.eval()
    cams = orbit_cameras(2, radius=4.0, elevation_deg=30.0, width=40, height=40)
    return scene, field, grid, cams


def test_occupancy_grid_finds_the_object(scene_setup):
    scene, field, grid, cams = scene_setup
    occupied = grid.binaries.float().mean().item()
    assert 0.01 < occupied < 0.5, f"{occupied:.3f} of the cells occupied"


def test_backends_agree_on_real_samples(scene_setup):
    scene, field, grid, cams = scene_setup
    # every 5th ray: the Triton interpreter composites about 20 k samples a second
    o, d = (t.reshape(-1, 3)[::5] for t in generate_rays(cams))
    from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect

    t0, t1, _ = ray_aabb_intersect(o, d, grid.aabbs[:1])
    marched = {b: ray_march(o, d, t0[:, 0], t1[:, 0], grid.binaries, grid.aabbs[0], STEP, 0.004, backend=b)
               for b in ("reference", "cpu")}
    for a, b in zip(marched["reference"], marched["cpu"]):
        assert torch.equal(a, b)
    packed, ray_indices, ts, te = marched["cpu"]
    assert ts.numel() > 1000
    mid = (ts + te)[:, None] / 2
    sigma = field.density(o[ray_indices] + d[ray_indices] * mid).detach()
    vals = torch.rand(ts.numel(), 3, generator=torch.Generator().manual_seed(0))
    backends = ["reference", "cpu"] + (["triton"] if _dispatch.triton_interpret() else [])
    results = {}
    for b in backends:
        s, v = sigma.clone().requires_grad_(), vals.clone().requires_grad_()
        r = composite(packed, ts, te, densities=s, values=v, backend=b)
        (r.accumulated.sum() + r.depth.sum() + r.transmittance.sum()).backward()
        results[b] = (r, s.grad, v.grad)
    ref, gs, gv = results["reference"]
    for b in backends[1:]:
        r, s_grad, v_grad = results[b]
        for name in ("weights", "transmittance", "accumulated", "opacity", "depth"):
            assert_close(getattr(r, name), getattr(ref, name), atol=2e-5, rtol=1e-4, what=f"{b} {name}")
        assert_close(s_grad, gs, atol=2e-5, rtol=1e-3, what=f"{b} d_sigma")
        assert_close(v_grad, gv, atol=2e-5, rtol=1e-4, what=f"{b} d_values")


def test_render_matches_sphere_traced_truth(scene_setup):
    scene, field, grid, cams = scene_setup
    truth = shapeworld.render(scene, cams, background=(1.0, 1.0, 1.0))
    out = render_image(field, grid, cams, render_step_size=STEP, chunk=999)
    mask = out["opacity"] > 0.5
    true_mask = truth["mask"] > 0.5
    iou = (mask & true_mask).sum().item() / (mask | true_mask).sum().item()
    assert iou > 0.9, f"silhouette IoU {iou:.3f}"
    both = mask & true_mask
    depth_err = (out["depth"][both] - truth["depth"][both]).abs().median().item()
    assert depth_err < 0.05, f"median depth error {depth_err:.3f}"
    # pixels the object covers take its colour, the rest the background
    assert_close(out["rgb"][both].mean(0), field.color, atol=0.05, rtol=0, what="object colour")
    faint = (out["opacity"] < 0.05) & ~true_mask
    assert faint.sum() > 0.5 * faint.numel() and (out["rgb"][faint] > 0.95).all()


def test_chunking_and_background(scene_setup):
    scene, field, grid, cams = scene_setup
    a = render_image(field, grid, cams[0], render_step_size=STEP, chunk=1 << 20)
    b = render_image(field, grid, cams[0], render_step_size=STEP, chunk=97)
    for k in ("rgb", "opacity", "depth"):
        assert_close(b[k], a[k], atol=1e-6, rtol=0, what=k)
    o, d = (t.reshape(-1, 3) for t in generate_rays(cams[0]))
    green = render_rays(field, grid, o, d, render_step_size=STEP, background=(0.0, 1.0, 0.0))
    by_fn = render_rays(field, grid, o, d, render_step_size=STEP,
                        background=lambda dirs: torch.stack([dirs[:, 0] * 0, dirs[:, 0] * 0 + 1, dirs[:, 0] * 0], -1))
    assert_close(by_fn["rgb"], green["rgb"], atol=1e-6, rtol=0, what="background field")
    empty = green["opacity"] < 1e-4
    assert empty.any() and torch.allclose(green["rgb"][empty], torch.tensor([0.0, 1.0, 0.0]), atol=1e-3)


def test_reference_ops_give_the_same_image(scene_setup):
    scene, field, grid, cams = scene_setup
    fused = render_image(field, grid, cams[1], render_step_size=STEP)
    with pyengine.use_backend("reference"):
        ref = render_image(field, grid, cams[1], render_step_size=STEP)
    for k in ("rgb", "opacity", "depth"):
        assert_close(fused[k], ref[k], atol=1e-4, rtol=1e-4, what=k)
    assert fused["n_samples"] == ref["n_samples"]
