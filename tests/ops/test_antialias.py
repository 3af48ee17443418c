"""antialias: every backend against the reference (tests/op_harness.py), the topology rules, a
hand-computed blend, silhouette-only blending, and the silhouette gradient against finite
differences of the same forward with the image re-rasterized."""

from __future__ import annotations

import pytest
import torch

import pyengine
from pyengine.ops import antialias as antialias_mod
from pyengine.ops.antialias import antialias, antialias_topology
from pyengine.reference import antialias as ref_mod
from pyengine.reference.rasterize import rasterize
from tests.helpers import assert_close
from tests.op_harness import Bad, Case, OpSuite, change

CPU_BACKENDS = ["reference", "cpu"]
FP32_TOL = {"atol": 1e-5, "rtol": 1e-4}


# --------------------------------------------------------------------------------- meshes


def grid_mesh(g, n=5, m=4, jitter=0.12, fold=0.0, dtype=torch.float64):
    """A connected grid of n x m vertices over most of the screen (shared vertices, so interior
    edges are not silhouettes), random depth and w; ``fold`` moves some vertices far enough to
    fold triangles over their neighbours (silhouettes by facing). pos [V, 4], tri [T, 3]."""
    ys, xs = torch.meshgrid(torch.linspace(-0.8, 0.8, m, dtype=torch.float64),
                            torch.linspace(-0.85, 0.75, n, dtype=torch.float64), indexing="ij")
    xy = torch.stack([xs, ys], -1).reshape(-1, 2)
    xy = xy + (torch.rand(xy.shape, generator=g, dtype=torch.float64) - 0.5) * 2 * jitter
    if fold:
        k = torch.randint(0, xy.shape[0], (max(1, xy.shape[0] // 5),), generator=g)
        xy[k] += (torch.rand(k.shape[0], 2, generator=g, dtype=torch.float64) - 0.5) * 2 * fold
    z = torch.rand(xy.shape[0], 1, generator=g, dtype=torch.float64) * 0.8 - 0.4
    w = torch.rand(xy.shape[0], 1, generator=g, dtype=torch.float64) * 0.6 + 0.8
    pos = torch.cat([xy * w, z * w, w], 1)
    idx = torch.arange(n * m).reshape(m, n)
    a, b, c, d = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1), idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    tri = torch.cat([torch.stack([a, b, d], 1), torch.stack([a, d, c], 1)])
    return pos.to(dtype), tri


def soup(g, n_tri=4, dtype=torch.float64):
    """Independent triangles (no shared vertices: every edge is a silhouette)."""
    pos = torch.rand(3 * n_tri, 4, generator=g, dtype=torch.float64) * 2 - 1
    pos[:, 2] *= 0.9
    pos[:, 3] = torch.rand(3 * n_tri, generator=g, dtype=torch.float64) * 0.5 + 0.75
    pos[:, :3] *= pos[:, 3:]
    return pos.to(dtype), torch.arange(3 * n_tri).reshape(n_tri, 3)


def scene(g, dtype, n=5, m=4, fold=0.0, n_soup=3):
    """A grid mesh plus a triangle soup in one vertex buffer (so both kinds of edge are seen)."""
    p1, t1 = grid_mesh(g, n, m, fold=fold, dtype=dtype)
    p2, t2 = soup(g, n_soup, dtype=dtype)
    return torch.cat([p1, p2]), torch.cat([t1, t2 + p1.shape[0]])


def _rast(pos, tri, H, W):
    """rast of pos [B, V, 4] in pos's dtype (the reference rasterizer)."""
    return rasterize(pos, tri, (H, W))


def make(g, dtype, device, B=2, H=13, W=17, C=3, shared=False, fold=0.0, n=5, m=4, n_soup=3, topology=False,
         perturb=0.03, **kwargs):
    """(args, kwargs) of antialias: per-image meshes (the same topology, moved a little per image)
    or one shared mesh ([V, 4] pos)."""
    pos, tri = scene(g, torch.float64, n, m, fold, n_soup)
    if shared:
        pos_b = pos[None]
        rast = _rast(pos_b, tri, H, W).expand(B, H, W, 4).contiguous()
        pos_arg = pos
    else:
        pos_b = pos[None] + (torch.rand(B, *pos.shape, generator=g, dtype=torch.float64) - 0.5) * perturb
        rast = _rast(pos_b, tri, H, W)
        pos_arg = pos_b
    color = torch.rand(B, H, W, C, generator=g, dtype=torch.float64)
    if topology:
        kwargs["topology"] = antialias_topology(tri).to(device)
    return ((color.to(dtype).to(device), rast.to(dtype).to(device), pos_arg.to(dtype).to(device), tri.to(device)),
            kwargs)


# --------------------------------------------------------------------------------- the harness


def _case(name, **kw):
    case_kw = {k: kw.pop(k) for k in ("cpu", "triton") if k in kw}
    return Case(name, lambda g, dtype, device: make(g, dtype, device, **kw), **case_kw)


CASES = [
    _case("grid-B2"),
    _case("grid-folded-B2", fold=0.35),
    _case("shared-pos-B2", shared=True, topology=True),
    _case("odd-B1-C1", B=1, H=23, W=9, C=1, n=7, m=6, fold=0.2),
    _case("C5", B=1, H=11, W=12, C=5, n_soup=6),
    _case("one-row", B=2, H=1, W=19),
    _case("one-column", B=1, H=21, W=1),
    _case("empty-batch", B=0),
    _case("zero-channels", C=0),
    _case("empty-image", H=0, W=7),
    _case("no-triangles", n=1, m=1, n_soup=0),
    _case("large", B=2, H=96, W=80, C=3, n=12, m=10, fold=0.1, n_soup=8, cpu=False),
]


def _base(g, device):
    return make(g, torch.float32, device, B=2, H=9, W=10, C=2, topology=True)


def _gradcheck_make(g, dtype, device):
    """A folded grid and a soup on a small image, with the exact position gradient (no
    regulariser), so that gradcheck checks the kernels' derivative of their own forward."""
    return make(g, dtype, device, B=1, H=9, W=11, C=2, n=4, m=3, fold=0.3, n_soup=2, topology=True,
                pos_grad_eps=0.0)


CASES.append(Case("gradcheck", _gradcheck_make, dtypes=(torch.float64,)))
CASES.append(_case("exact-gradient-B2", fold=0.2, pos_grad_eps=0.0))


BAD = [
    Bad("int-color", change(0, lambda t: t.long()), TypeError, "color must be float16"),
    Bad("3d-color", change(0, lambda t: t[0]), ValueError, r"color must be \[B, H, W, C\]"),
    Bad("rast-size", change(1, lambda t: t[:, :-1]), ValueError, r"rast must be \[B, H, W, 4\] with B = 2"),
    Bad("rast-channels", change(1, lambda t: t[..., :3]), ValueError, r"rast must be \[B, H, W, 4\]"),
    Bad("pos-3", change(2, lambda t: t[..., :3]), ValueError, r"pos must be \[P, V, 4\]"),
    Bad("pos-batch", change(2, lambda t: torch.cat([t, t, t])), ValueError,
        r"pos must be \[V, 4\], \[1, V, 4\] or \[B, V, 4\] with B = 2"),
    Bad("float-tri", change(3, lambda t: t.float()), TypeError, "tri must be int32 or int64"),
    Bad("tri-range", change(3, lambda t: torch.where(t == t.max(), 10_000, t)), ValueError,
        r"tri must hold vertex indices in \[0, V\)"),
    Bad("negative-tri", change(3, lambda t: -t - 1), ValueError, r"tri must hold vertex indices in \[0, V\)"),
    Bad("rast-id-range", change(1, lambda t: torch.cat([t[..., :3], t[..., 3:] + 1000], -1)), ValueError,
        r"rast\[\.\.\., 3\] must hold triangle ids \+ 1 in \[0, T\]"),
    Bad("nan-id", change(1, lambda t: torch.cat([t[..., :3], torch.full_like(t[..., 3:], float("nan"))], -1)),
        ValueError, "must hold triangle ids"),
    Bad("topology-shape", change("topology", lambda t: t[:-1]), ValueError, r"topology must be \[T, 3\] with T ="),
    Bad("topology-float", change("topology", lambda t: t.float()), TypeError, "topology must be int32 or int64"),
    Bad("meta-pos", change(2, lambda t: t.to("meta")), ValueError, "pos is on meta but color is on cpu"),
    Bad("negative-eps", change("pos_grad_eps", lambda _: -1e-3), ValueError, "pos_grad_eps must be a float >= 0"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

# float64: grad_pos sums many terms of either sign (and 1 / dy factors) in another order than autograd
SUITE = OpSuite(antialias_mod.OP, antialias, CASES, grads=(0, 2),
                tol={torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-8)}, base=_base, bad=BAD,
                gradcheck_case="gradcheck", compile_kwargs={"validate": False})
globals().update(SUITE.tests())


# --------------------------------------------------------------------------------- topology


def test_topology_rules():
    tri = torch.tensor([[0, 1, 2], [2, 1, 3], [1, 2, 4], [0, 0, 1], [0, 1, 2], [5, -1, 6], [3, 1, 7]])
    got = antialias_topology(tri).tolist()
    # edge {1, 2} is shared by triangles 0, 1, 2 and 4 (opposite vertices 0, 3, 4, 0): the first two
    # distinct opposite vertices are 0 and 3, so triangles 0 and 4 see 3, triangle 1 sees 0,
    # triangle 2 (a third distinct one) sees none
    assert got[0] == [3, -1, -1]
    assert got[4] == [3, -1, -1]
    assert got[1] == [7, -1, 0]  # edge {1, 3} is shared with triangle 6 (opposite 7)
    assert got[2] == [-1, -1, -1]
    assert got[3] == [-1, -1, -1]  # degenerate: left out
    assert got[5] == [-1, -1, -1]  # negative index: left out
    assert got[6] == [-1, -1, 2]  # across {3, 1} from triangle 1 (opposite 2)
    assert antialias_topology(torch.zeros(0, 3, dtype=torch.int32)).shape == (0, 3)


def test_topology_of_a_closed_mesh_has_no_boundary():
    """A tetrahedron: every edge has exactly one neighbour, whose opposite vertex is the vertex not
    on the edge's two triangles' shared edge, i.e. the fourth vertex."""
    tri = torch.tensor([[0, 1, 2], [0, 3, 1], [1, 3, 2], [2, 3, 0]])
    topo = antialias_topology(tri)
    for t in range(4):
        for k in range(3):
            a, b = int(tri[t, (k + 1) % 3]), int(tri[t, (k + 2) % 3])
            other = set(range(4)) - {a, b, int(tri[t, k])}
            assert int(topo[t, k]) in other


# --------------------------------------------------------------------------------- hand-made cases


def _half_plane_triangle(edge_x, transpose, H, W):
    """One triangle covering everything left of the NDC line x = edge_x (or below y = edge_x when
    transposed) inside the image, its other edges off screen."""
    pts = [(-3.0, -3.0), (edge_x, -3.0), (edge_x, 3.0)]
    if transpose:
        pts = [(y, x) for x, y in pts]
    pos = torch.tensor([[x, y, 0.25, 1.0] for x, y in pts], dtype=torch.float64)
    return pos, torch.tensor([[0, 1, 2]])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("transpose", [False, True], ids=["vertical-edge", "horizontal-edge"])
@pytest.mark.parametrize("frac", [0.3, 0.8])
def test_hand_computed_blend(backend, transpose, frac):
    """The edge crosses between the centres of pixel 1 (covered) and pixel 2 (background) at the
    fraction ``frac`` of the way: frac < 1/2 blends pixel 1 towards the background by 1/2 - frac,
    frac > 1/2 blends pixel 2 towards the triangle by frac - 1/2; nothing else changes."""
    n, m = 4, 3  # pixels along and across the crossing axis
    H, W = (n, m) if transpose else (m, n)
    edge_px = 1.5 + frac  # pixel units along the axis
    edge_x = edge_px * 2 / n - 1
    pos, tri = _half_plane_triangle(edge_x, transpose, H, W)
    rast = rasterize(pos, tri, (H, W))
    ids = rast[0, ..., 3]
    along = ids.t() if transpose else ids
    assert along[:, :2].eq(1).all() and along[:, 2:].eq(0).all(), along
    c_tri = torch.tensor([0.9, 0.1, 0.5], dtype=torch.float64)
    c_bg = torch.tensor([0.2, 0.6, 0.3], dtype=torch.float64)
    color = torch.where(rast[..., 3:] > 0, c_tri, c_bg)
    p = pos.clone().requires_grad_()
    out = antialias(color, rast, p, tri, backend=backend)
    want = color.clone()
    view = want[0].transpose(0, 1) if transpose else want[0]
    if frac < 0.5:
        view[:, 1] = c_tri + (0.5 - frac) * (c_bg - c_tri)
    else:
        view[:, 2] = c_bg + (frac - 0.5) * (c_tri - c_bg)
    assert_close(out, want, atol=1e-12, rtol=0, what="blend")

    # the gradient of sum(g * out) w.r.t. the edge's coordinate: alpha = |1/2 - frac| changes by
    # -+1 per pixel, the edge by n / 2 pixels per NDC unit, times the regulariser dy / (dy + 1e-3)
    g = torch.rand(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (gp,) = torch.autograd.grad((out * g).sum(), p)
    axis = 1 if transpose else 0
    gv = g[0].transpose(0, 1) if transpose else g[0]
    target = 1 if frac < 0.5 else 2
    dd = (gv[:, target] * ((c_bg - c_tri) if frac < 0.5 else (c_tri - c_bg))).sum()
    dy = 6.0 * m / 2  # the edge's length across the axis, in pixels
    want_g = (-1.0 if frac < 0.5 else 1.0) * (n / 2) * dd * dy / (dy + 1e-3)
    assert abs(float(gp[1:, axis].sum()) - float(want_g)) < 1e-9 * max(1.0, abs(float(want_g)))
    assert float(gp[0].abs().sum()) == 0  # the third vertex does not move the crossing


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_interior_edges_do_not_blend_silhouettes_do(backend):
    """A quad of two triangles sharing a diagonal, both facing the camera: pairs across the
    diagonal differ in id but are not blended (they are, when the topology says the diagonal has
    no neighbour). Folding one triangle over the other (its far vertex moved across the diagonal)
    makes the diagonal a silhouette: then the mesh's topology and "no neighbours" agree."""
    H = W = 16
    quad = torch.tensor([[-0.7, -0.6, 0.0, 1.0], [0.6, -0.7, 0.0, 1.0], [0.7, 0.6, 0.0, 1.0], [-0.6, 0.7, 0.0, 1.0]],
                        dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    none = torch.full((2, 3), -1)
    rast = rasterize(quad, tri, (H, W))
    color = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = antialias(color, rast, quad, tri, backend=backend)
    ids = rast[0, ..., 3]
    covered = ids > 0
    # pixels whose four neighbours are all covered (inside the quad) keep their colour, the
    # diagonal's pixels included
    inner = covered.clone()
    inner[1:] &= covered[:-1]
    inner[:-1] &= covered[1:]
    inner[:, 1:] &= covered[:, :-1]
    inner[:, :-1] &= covered[:, 1:]
    inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
    assert (ids[inner] == 1).any() and (ids[inner] == 2).any()
    assert torch.equal(out[0][inner], color[0][inner])
    assert not torch.equal(out, color)  # the outline blends
    out_none = antialias(color, rast, quad, tri, none, backend=backend)
    assert not torch.equal(out_none[0][inner], color[0][inner])  # now the diagonal blends too

    # fold triangle 1 over triangle 0: vertex 3 moved across the diagonal 0-2, nearer the camera
    folded = quad.clone()
    folded[3] = torch.tensor([0.1, -0.5, -0.5, 1.0], dtype=torch.float64)
    rast_f = rasterize(folded, tri, (H, W))
    out_f = antialias(color, rast_f, folded, tri, backend=backend)
    assert torch.equal(out_f, antialias(color, rast_f, folded, tri, none, backend=backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_topology_argument_matches_the_computed_one(backend):
    (color, rast, pos, tri), _ = make(torch.Generator().manual_seed(5), torch.float32, "cpu", fold=0.3)
    a = antialias(color, rast, pos, tri, backend=backend)
    b = antialias(color, rast, pos, tri, antialias_topology(tri.int()).int(), backend=backend)
    assert torch.equal(a, b)


def test_pos_gradient_boost_scales_the_position_gradient_only():
    (color, rast, pos, tri), _ = make(torch.Generator().manual_seed(6), torch.float64, "cpu")
    grads = []
    for boost in (1.0, 3.0):
        c, p = color.clone().requires_grad_(), pos.clone().requires_grad_()
        out = antialias(c, rast, p, tri, pos_gradient_boost=boost, backend="cpu")
        grads.append(torch.autograd.grad((out * out).sum(), (c, p)))
    assert torch.equal(grads[0][0], grads[1][0])
    assert_close(grads[1][1], 3 * grads[0][1], atol=0, rtol=1e-15, what="boosted")
    assert grads[0][1].abs().sum() > 0


# --------------------------------------------------------------------------------- silhouette gradients


def _render(pos, tri, H, W, weights, backend, colors, **kw):
    """sum(weights * antialias(image)) where the image is a flat colour per triangle over a
    background, rasterized from pos: it depends on pos only through coverage, so all of its
    position gradient comes from antialias."""
    rast = rasterize(pos.detach(), tri, (H, W))
    color = colors[rast[..., 3].long()]
    return (antialias(color, rast, pos, tri, backend=backend, **kw) * weights).sum()


def _central_differences(fn, pos, h=1e-6):
    num = torch.zeros_like(pos)
    for i in range(pos.shape[0]):
        for j in range(4):
            e = torch.zeros_like(pos)
            e[i, j] = h
            num[i, j] = (fn(pos + e) - fn(pos - e)) / (2 * h)
    return num


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_silhouette_gradient_matches_finite_differences(backend):
    """Triangles over a background and over each other, float64: the gradient w.r.t. pos of
    sum(weights * antialiased image) matches central differences of the same quantity, the image
    re-rasterized at every step (steps of 1e-6 keep coverage fixed). Exactly with
    ``pos_grad_eps=0``; within nvdiffrast's regulariser (relative 1e-3 / dy) by default."""
    g = torch.Generator().manual_seed(11)
    H, W = 20, 24
    pos, tri = soup(g, 3)
    pos[:, 2] = torch.tensor([0.1, 0.1, 0.1, -0.2, -0.2, -0.2, 0.3, 0.3, 0.3], dtype=torch.float64) * pos[:, 3]
    weights = torch.rand(1, H, W, 3, generator=g, dtype=torch.float64)
    colors = torch.rand(tri.shape[0] + 1, 3, generator=g, dtype=torch.float64)
    for eps, rtol in ((0.0, 1e-6), (1e-3, 3e-3)):
        p = pos.clone().requires_grad_()
        (grad,) = torch.autograd.grad(_render(p, tri, H, W, weights, backend, colors, pos_grad_eps=eps), p)
        num = _central_differences(lambda q: _render(q, tri, H, W, weights, backend, colors, pos_grad_eps=eps), pos)
        assert_close(grad, num, atol=1e-7 * float(num.abs().max()), rtol=rtol, what=f"d/dpos, eps {eps}")
        assert grad[:, [0, 1, 3]].abs().min() > 0  # every vertex is on a silhouette
        assert grad[:, 2].abs().max() == 0  # depth moves no edge


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_output_is_continuous_as_an_edge_crosses_pixel_centres(backend):
    """One triangle whose vertices lie off screen, one vertex moved along a path in 300 steps: its
    two edges sweep across pixel centres (coverage changes several times) and the image changes by
    no more than first-order steps, so the derivative integrates to the change (trapezoid rule).
    Border pixels are left out: a crossing between a border pixel's centre and the image edge has
    no pixel pair, so the blend there jumps (in nvdiffrast as well), as it does near vertices and
    where a triangle's edge meets another triangle, whose edges antialias does not consider."""
    H = W = 16
    pos = torch.tensor([[-1.6, -1.3, 0.2, 1.0], [1.5, -0.2, 0.1, 1.0], [0.1, 1.9, 0.3, 1.0]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]])
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(1, H, W, 3, generator=g, dtype=torch.float64)
    weights[:, [0, -1]] = 0
    weights[:, :, [0, -1]] = 0
    colors = torch.tensor([[0.1, 0.5, 0.3], [0.9, 0.2, 0.6]], dtype=torch.float64)
    ts = torch.linspace(0, 0.3, 301, dtype=torch.float64)
    values, slopes, covered = [], [], set()
    for t in ts:
        p = pos.clone()
        p[1, 0] += t
        p[1, 3] += 0.3 * t
        p.requires_grad_()
        f = _render(p, tri, H, W, weights, backend, colors)
        (grad,) = torch.autograd.grad(f, p)
        values.append(float(f.detach()))
        slopes.append(float(grad[1, 0] + 0.3 * grad[1, 3]))
        covered.add(int((rasterize(p.detach(), tri, (H, W))[..., 3] > 0).sum()))
    values, slopes = torch.tensor(values), torch.tensor(slopes)
    dt = float(ts[1] - ts[0])
    step = values[1:] - values[:-1]
    trapezoid = step - dt * (slopes[1:] + slopes[:-1]) / 2
    assert len(covered) >= 4, covered
    assert float(step.abs().max()) <= 1.5 * dt * float(slopes.abs().max())
    assert float(trapezoid.abs().max()) < 0.1 * dt * float(slopes.abs().max())


# --------------------------------------------------------------------------------- misc


def test_input_dtypes_are_promoted():
    (color, rast, pos, tri), _ = make(torch.Generator().manual_seed(3), torch.float32, "cpu")
    out = antialias(color.half(), rast, pos, tri.int(), backend="cpu")
    assert out.dtype == torch.float32
    want = ref_mod.antialias(color.half().float(), rast, pos, tri)
    assert_close(out, want, **FP32_TOL, what="half colour")
    out64 = antialias(color, rast, pos.double(), tri, backend="cpu")
    assert out64.dtype == torch.float64


def test_non_contiguous_inputs():
    (color, rast, pos, tri), _ = make(torch.Generator().manual_seed(4), torch.float32, "cpu")
    color_nc = color.transpose(1, 2).contiguous().transpose(1, 2)
    pos_nc = torch.stack([pos, pos], -1)[..., 0]
    assert not (color_nc.is_contiguous() or pos_nc.is_contiguous())
    want = ref_mod.antialias(color, rast, pos, tri)
    for backend in CPU_BACKENDS:
        assert_close(antialias(color_nc, rast, pos_nc, tri, backend=backend), want, **FP32_TOL, what=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kernels_skip_out_of_range_values(backend):
    """Called without validation, bad ids and indices are skipped, never read out of bounds: the
    output equals that of the same image where those pairs are absent."""
    (color, rast, pos, tri), _ = make(torch.Generator().manual_seed(8), torch.float32, "cpu", B=1)
    T_ = tri.shape[0]
    bad_rast = rast.clone()
    bad_rast[0, 0, :, 3] = T_ + 5  # an id beyond T: the first row's pairs are skipped
    bad_tri = tri.clone()
    bad_tri[0] = torch.tensor([0, 10**6, 1])
    topo = antialias_topology(tri)
    topo[1] = torch.tensor([10**6, -7, 2])
    out = torch.ops.pyengine.antialias_fwd(color, bad_rast, pos, bad_tri, topo, 1e-3, backend)
    want = ref_mod.antialias_fwd(color, bad_rast, pos, bad_tri, topo)
    assert_close(out, want, **FP32_TOL, what="skipped pairs")


def test_default_backend_is_cpu(monkeypatch):
    from pyengine.ops import _dispatch

    monkeypatch.delenv("PYENGINE_BACKEND", raising=False)
    seen = []
    real = _dispatch.select

    def spy(*args, **kwargs):
        b = real(*args, **kwargs)
        seen.append(b.name)
        return b

    monkeypatch.setattr(_dispatch, "select", spy)
    (color, rast, pos, tri), _ = make(torch.Generator().manual_seed(9), torch.float32, "cpu", B=1)
    antialias(color, rast, pos, tri)
    assert seen[0] == "cpu"
