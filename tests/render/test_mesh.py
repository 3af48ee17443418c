"""Mesh extraction and export on analytic densities: marching cubes lands on the known level set in
world coordinates, the surface is closed and wound outward, colours and files round-trip through
trimesh and imageio."""

import numpy as np
import pytest
import torch

from pyengine.render.mesh import (
    Mesh,
    extract_mesh,
    image_grid,
    mp4_available,
    write_glb,
    write_mesh,
    write_obj,
    write_turntable,
)

trimesh = pytest.importorskip("trimesh")
iio = pytest.importorskip("imageio.v3")

THRESHOLD = 25.0
BOX = [-1.1, -1.1, -1.1, 1.1, 1.1, 1.1]
RES = 32
CELL = 2.2 / (RES - 1)


def ellipsoid_density(center, radii, slope=100.0):
    """Density THRESHOLD on the ellipsoid, rising inward; linear in the normalised radius."""
    c, r = torch.tensor(center), torch.tensor(radii)

    def fn(x):
        rho = ((x - c) / r).norm(dim=-1)  # 1 on the surface
        return (THRESHOLD + slope * (1.0 - rho) * r.min()).clamp_min(0.0)

    return fn


sphere = ellipsoid_density((0.0, 0.0, 0.0), (0.5, 0.5, 0.5))


def face_normals(v, f):
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return np.cross(b - a, c - a), (a + b + c) / 3


@pytest.fixture(scope="module")
def sphere_mesh():
    return extract_mesh(sphere, BOX, resolution=RES, threshold=THRESHOLD)


def test_sphere_vertices_on_the_level_set(sphere_mesh):
    m = sphere_mesh
    assert m.vertices.dtype == np.float32 and m.vertices.shape[1] == 3
    assert m.faces.dtype == np.int64 and m.faces.shape[1] == 3
    assert m.faces.min() >= 0 and m.faces.max() < len(m.vertices)
    err = np.abs(np.linalg.norm(m.vertices, axis=1) - 0.5)
    assert err.max() < CELL, f"max |r - 0.5| = {err.max():.4f}, cell {CELL:.4f}"
    assert err.mean() < 0.1 * CELL, f"mean |r - 0.5| = {err.mean():.5f}"


def test_sphere_watertight_and_outward(sphere_mesh):
    m = sphere_mesh
    tm = trimesh.Trimesh(m.vertices, m.faces, process=False)
    assert tm.is_watertight and tm.is_winding_consistent
    assert trimesh.Trimesh(m.vertices, m.faces).is_watertight
    n, centroid = face_normals(m.vertices.astype(np.float64), m.faces)
    dots = np.einsum("ij,ij->i", n, centroid)
    assert dots.mean() > 0 and (dots > 0).mean() > 0.99, f"outward fraction {(dots > 0).mean():.3f}"
    # signed volume (positive only for outward winding) against the ball's
    vol = 4.0 / 3.0 * np.pi * 0.5**3
    assert abs(tm.volume - vol) < 0.03 * vol, f"volume {tm.volume:.4f} vs {vol:.4f}"


def test_normals_point_out_of_the_dense_region():
    """A hollow: density high outside a ball and low inside -> normals point towards the centre."""
    m = extract_mesh(lambda x: 2 * THRESHOLD - sphere(x), BOX, resolution=RES, threshold=THRESHOLD)
    n, centroid = face_normals(m.vertices.astype(np.float64), m.faces)
    assert (np.einsum("ij,ij->i", n, centroid) < 0).mean() > 0.99


def test_world_coordinates_of_an_offset_ellipsoid_in_a_skewed_box():
    """Different radii and box extents per axis: any swapped or mis-scaled axis moves the surface."""
    center, radii = (0.3, -0.2, 0.1), (0.5, 0.3, 0.4)
    lo, hi = np.array([-0.4, -0.7, -0.5]), np.array([1.0, 0.3, 0.8])
    res = 40
    aabb = torch.tensor(np.stack([lo, hi]))  # the [2, 3] form
    m = extract_mesh(ellipsoid_density(center, radii), aabb, resolution=res, threshold=THRESHOLD)
    rho = np.linalg.norm((m.vertices - np.array(center)) / np.array(radii), axis=1)
    cell = ((hi - lo) / (res - 1)).max()
    assert np.abs(rho - 1).max() < cell / min(radii)
    assert np.abs(rho - 1).mean() < 0.05
    # the extremes reach the ellipsoid's extent on each axis
    np.testing.assert_allclose(m.vertices.max(0), np.array(center) + radii, atol=cell)
    np.testing.assert_allclose(m.vertices.min(0), np.array(center) - radii, atol=cell)


def test_chunking_and_output_shape_change_nothing(sphere_mesh):
    m = extract_mesh(lambda x: sphere(x)[:, None].double(), BOX, resolution=RES, threshold=THRESHOLD, chunk=997)
    np.testing.assert_array_equal(m.vertices, sphere_mesh.vertices)
    np.testing.assert_array_equal(m.faces, sphere_mesh.faces)


def test_colors_from_color_fn(sphere_mesh):
    lo = torch.tensor(BOX[:3])
    m = extract_mesh(sphere, BOX, resolution=RES, threshold=THRESHOLD, color_fn=lambda x: (x - lo) / 2.2, chunk=500)
    assert m.vertex_colors.dtype == np.uint8 and m.vertex_colors.shape == m.vertices.shape
    expected = (m.vertices - np.array(BOX[:3])) / 2.2 * 255
    assert np.abs(m.vertex_colors.astype(np.float64) - expected).max() <= 0.51
    assert (sphere_mesh.vertex_colors == sphere_mesh.vertex_colors[0]).all()  # grey without color_fn
    c = sphere_mesh.vertex_colors[0]
    assert c[0] == c[1] == c[2] and 0 < c[0] < 255
    # out-of-range colours are clipped
    m = extract_mesh(sphere, BOX, resolution=8, threshold=THRESHOLD, color_fn=lambda x: 3 * x)
    assert m.vertex_colors.min() == 0 and m.vertex_colors.max() == 255


def test_largest_component():
    big, small = ellipsoid_density((-0.45, 0, 0), (0.4,) * 3), ellipsoid_density((0.6, 0, 0), (0.2,) * 3)

    def two(x):
        return torch.maximum(big(x), small(x))

    both = extract_mesh(two, BOX, resolution=RES, threshold=THRESHOLD)
    one = extract_mesh(two, BOX, resolution=RES, threshold=THRESHOLD, largest_component=True)
    d_big = np.abs(np.linalg.norm(one.vertices - [-0.45, 0, 0], axis=1) - 0.4)
    assert d_big.max() < CELL
    assert (both.vertices[:, 0] > 0.3).any() and not (one.vertices[:, 0] > 0.3).any()
    assert len(one.faces) < len(both.faces) and one.faces.max() < len(one.vertices)
    assert len(one.vertex_colors) == len(one.vertices)
    assert trimesh.Trimesh(one.vertices, one.faces, process=False).is_watertight
    # same triangles as the big piece of the full mesh
    tri_one = np.sort(one.vertices[one.faces].reshape(-1, 9), axis=0)
    sel = both.vertices[both.faces][:, :, 0].mean(1) < 0.1
    tri_both = np.sort(both.vertices[both.faces[sel]].reshape(-1, 9), axis=0)
    np.testing.assert_array_equal(tri_one, tri_both)


def test_empty_density_raises():
    with pytest.raises(ValueError, match=r"never crosses.*min 3, max 3"):
        extract_mesh(lambda x: torch.full((x.shape[0],), 3.0), BOX, resolution=8, threshold=THRESHOLD)
    with pytest.raises(ValueError, match="never crosses"):  # all above
        extract_mesh(lambda x: sphere(x) + 100, BOX, resolution=8, threshold=THRESHOLD)


def test_fallback_level_for_a_weak_density():
    """A field whose density never reaches the threshold: with fallback, the surface is the level
    at that fraction of the largest density (said in a warning); a constant field still raises."""
    weak = lambda x: 0.2 * sphere(x)  # max 0.2 * (25 + 50) = 15 < 25: below the threshold everywhere
    with pytest.raises(ValueError, match="never crosses"):
        extract_mesh(weak, BOX, resolution=RES, threshold=THRESHOLD)
    with pytest.warns(RuntimeWarning, match="stays below the threshold 25"):
        m = extract_mesh(weak, BOX, resolution=RES, threshold=THRESHOLD, fallback=0.5)
    axis = torch.linspace(-1.1, 1.1, RES)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    vmax = float(weak(grid).max())  # the largest density on the grid
    # weak = 0.2 * (25 + 50 (1 - 2 r)) inside: the level 0.5 * vmax lies at this radius
    r = (1 - (0.5 * vmax / 0.2 - 25) / 50) / 2
    err = np.abs(np.linalg.norm(m.vertices, axis=1) - r)
    assert err.max() < CELL, (r, err.max())
    # a field above the threshold is unaffected by fallback
    same = extract_mesh(sphere, BOX, resolution=RES, threshold=THRESHOLD, fallback=0.5)
    assert same.vertices.shape == extract_mesh(sphere, BOX, resolution=RES, threshold=THRESHOLD).vertices.shape
    with pytest.raises(ValueError, match="never crosses"):
        extract_mesh(lambda x: torch.full((x.shape[0],), 3.0), BOX, resolution=8, threshold=THRESHOLD, fallback=0.5)
    for bad in (0, 1, 1.5, -0.2, "half"):
        with pytest.raises(ValueError, match="fallback: expected None or a fraction"):
            extract_mesh(weak, BOX, resolution=8, threshold=THRESHOLD, fallback=bad)


@pytest.mark.parametrize("aabb", [[0, 0, 0, 1, 1], [0, 0, 0, 1, 0, 1], [1, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, np.inf],
                                  "box"])
def test_bad_aabb(aabb):
    with pytest.raises(ValueError, match="aabb"):
        extract_mesh(sphere, aabb, resolution=8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="resolution"):
        extract_mesh(sphere, BOX, resolution=1)
    with pytest.raises(TypeError, match="resolution"):
        extract_mesh(sphere, BOX, resolution=8.0)
    with pytest.raises(ValueError, match="chunk"):
        extract_mesh(sphere, BOX, resolution=8, chunk=0)
    with pytest.raises(ValueError, match="threshold"):
        extract_mesh(sphere, BOX, resolution=8, threshold=float("nan"))
    with pytest.raises(ValueError, match="density_fn"):
        extract_mesh(lambda x: sphere(x)[:-1], BOX, resolution=8)
    with pytest.raises(ValueError, match="density_fn.*NaN"):
        extract_mesh(lambda x: sphere(x) / (x.norm(dim=-1) > 10), BOX, resolution=8)
    with pytest.raises(ValueError, match="color_fn"):
        extract_mesh(sphere, BOX, resolution=8, color_fn=lambda x: x[:, :2])


def test_obj_round_trip(sphere_mesh, tmp_path):
    lo = torch.tensor(BOX[:3])
    m = extract_mesh(sphere, BOX, resolution=16, threshold=THRESHOLD, color_fn=lambda x: (x - lo) / 2.2)
    path = write_obj(m, str(tmp_path / "sub" / "m.obj"))
    back = trimesh.load(path, process=False)
    assert len(back.vertices) == len(m.vertices)
    np.testing.assert_allclose(back.vertices, m.vertices, atol=1e-6)
    np.testing.assert_array_equal(back.faces, m.faces)
    assert back.visual.kind == "vertex"
    np.testing.assert_array_equal(back.visual.vertex_colors[:, :3], m.vertex_colors)
    assert len(trimesh.load(path).vertices) == len(m.vertices)


def test_glb_round_trip(tmp_path):
    lo = torch.tensor(BOX[:3])
    m = extract_mesh(sphere, BOX, resolution=16, threshold=THRESHOLD, color_fn=lambda x: (x - lo) / 2.2)
    path = write_glb(m, str(tmp_path / "m.glb"))
    back = trimesh.load(path, force="mesh")
    assert len(back.vertices) == len(m.vertices) and len(back.faces) == len(m.faces)
    assert back.visual.kind == "vertex"
    np.testing.assert_array_equal(back.visual.vertex_colors[:, :3], m.vertex_colors)
    np.testing.assert_allclose(back.vertices, m.vertices, atol=1e-6)
    assert back.is_watertight and back.volume > 0


def test_write_mesh(sphere_mesh, tmp_path):
    stem = str(tmp_path / "mesh")
    assert write_mesh(sphere_mesh, stem) == [stem + ".obj", stem + ".glb"]
    assert write_mesh(sphere_mesh, stem + "2", formats=("glb",)) == [stem + "2.glb"]
    with pytest.raises(ValueError, match="formats"):
        write_mesh(sphere_mesh, stem, formats=("ply",))
    bad = Mesh(sphere_mesh.vertices, sphere_mesh.faces + len(sphere_mesh.vertices), sphere_mesh.vertex_colors)
    with pytest.raises(ValueError, match="mesh"):
        write_obj(bad, stem + ".obj")


def _frames(T=5, H=20, W=24):
    """Frames with few colours (exact through the GIF palette): a square moving across grey."""
    f = np.full((T, H, W, 3), 100, np.uint8)
    for t in range(T):
        f[t, 4:12, 2 + 3 * t:10 + 3 * t] = (220, 30, 40)
    return f


def test_turntable_gif(tmp_path):
    frames = _frames()
    files = write_turntable(frames, str(tmp_path / "tt"), fps=10, formats=("gif",))
    assert files == [str(tmp_path / "tt.gif")]
    back = iio.imread(files[0], index=None)
    assert back.shape[:3] == frames.shape[:3]
    np.testing.assert_array_equal(back[..., :3], frames)
    assert iio.immeta(files[0], index=0).get("duration") == 100


@pytest.mark.skipif(not mp4_available(), reason="imageio-ffmpeg is not installed")
@pytest.mark.parametrize("size", [(20, 24), (21, 23)])
def test_turntable_mp4(tmp_path, size):
    frames = _frames(6, *size)
    files = write_turntable(frames, str(tmp_path / "tt"), fps=12)
    assert files == [str(tmp_path / "tt.gif"), str(tmp_path / "tt.mp4")]
    back = iio.imread(files[1])
    H, W = size[0] + size[0] % 2, size[1] + size[1] % 2
    assert back.shape == (6, H, W, 3)
    assert np.abs(back[:, :size[0], :size[1]].astype(int) - frames).mean() < 10  # lossy


def test_turntable_without_mp4_plugin_skips(tmp_path, monkeypatch):
    import pyengine.render.mesh as mesh_mod

    monkeypatch.setattr(mesh_mod, "mp4_available", lambda: False)
    assert write_turntable(_frames(), str(tmp_path / "tt")) == [str(tmp_path / "tt.gif")]


def test_turntable_bad_input(tmp_path):
    with pytest.raises(TypeError, match="frames"):
        write_turntable(_frames().astype(np.float32), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="frames"):
        write_turntable(_frames()[0], str(tmp_path / "x"))
    with pytest.raises(ValueError, match="formats"):
        write_turntable(_frames(), str(tmp_path / "x"), formats=("avi",))


def test_image_grid():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    g = image_grid(imgs, cols=3)
    assert g.shape == (2 * 7 + 2, 3 * 9 + 2 * 2, 3) and g.dtype == np.uint8
    mask = np.ones(g.shape[:2], bool)
    for k in range(5):
        r, c = divmod(k, 3)
        y, x = r * 9, c * 11
        np.testing.assert_array_equal(g[y:y + 7, x:x + 9], imgs[k])
        mask[y:y + 7, x:x + 9] = False
    assert (g[mask] == 128).all()  # gaps and the empty sixth cell
    assert image_grid(imgs, cols=1).shape == (5 * 7 + 4 * 2, 9, 3)
    with pytest.raises(ValueError, match="cols"):
        image_grid(imgs, cols=0)
    with pytest.raises(ValueError, match="images"):
        image_grid(imgs[0], cols=2)
