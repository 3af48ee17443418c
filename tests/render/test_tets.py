"""DMTet geometry: the tet grid tiles the box conformingly with positive tets, marching tetrahedra gives closed,
outward-wound meshes of the right topology on analytic SDFs with finite-difference-exact gradients, and the
regularisers match hand computations and brute-force loops."""

import itertools
import math

import numpy as np
import pytest
import torch

from pyengine.render.tets import (
    TET_EDGES,
    grid_edges,
    laplacian_loss,
    marching_tets,
    normal_consistency,
    sdf_from_density,
    sdf_sign_loss,
    tet_grid,
)

trimesh = pytest.importorskip("trimesh")

GRADCHECK_EPS = 1e-6
GRADCHECK_ATOL = 1e-5
GRADCHECK_RTOL = 1e-4


def tet_volumes(verts, tets):
    """[T] signed volumes det(v1 - v0, v2 - v0, v3 - v0) / 6, in float64."""
    p = verts.double()[tets]
    return torch.linalg.det(torch.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]], 1)) / 6.0


def sphere_sdf(verts, center=(0.03, -0.02, 0.05), radius=0.6):
    return (verts - torch.tensor(center, dtype=verts.dtype)).norm(dim=-1) - radius


def torus_sdf(verts, major=0.55, minor=0.22):
    q = torch.stack([verts[:, :2].norm(dim=-1) - major, verts[:, 2]], -1)
    return q.norm(dim=-1) - minor


def mesh_edges(faces):
    """Directed edges [3F, 2] of a face list, as numpy."""
    f = faces.numpy()
    return np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])


def signed_volume(v, f):
    """Sum of signed tetra volumes origin-face: the enclosed volume for a closed outward-wound mesh."""
    p = v.double()[f]
    return float(torch.linalg.det(p).sum() / 6.0)


# ------------------------------------------------------------------------------------------------ tet_grid

@pytest.mark.parametrize("R", [1, 2, 3, 5])
def test_tet_grid_counts_and_positions(R):
    aabb = (-0.5, 0.0, 1.0, 1.5, 3.0, 2.0)
    verts, tets = tet_grid(R, aabb=aabb)
    assert verts.shape == ((R + 1) ** 3, 3) and verts.dtype == torch.float32
    assert tets.shape == (6 * R ** 3, 4) and tets.dtype == torch.int64
    # every vertex of the (R+1)^3 lattice exactly once
    lo, hi = torch.tensor(aabb[:3]), torch.tensor(aabb[3:])
    ijk = (verts.double() - lo) / (hi - lo) * R
    assert torch.allclose(ijk, ijk.round(), atol=1e-5)
    assert len({tuple(x) for x in ijk.round().long().tolist()}) == (R + 1) ** 3
    assert ijk.round().min() == 0 and ijk.round().max() == R
    # edges: per lattice vertex, at most the 7 directions with non-negative 0/1 steps
    lattice_edges = 3 * R * (R + 1) ** 2 + 3 * R ** 2 * (R + 1) + R ** 3
    edges = grid_edges(tets)
    assert edges.shape == (lattice_edges, 2)
    steps = (ijk.round().long()[edges[:, 1]] - ijk.round().long()[edges[:, 0]]).abs()
    assert steps.max() == 1


@pytest.mark.parametrize("R", [1, 3, 4])
def test_tet_grid_volumes(R):
    aabb = (-1.0, -0.5, 0.2, 1.0, 1.5, 0.7)
    verts, tets = tet_grid(R, aabb=aabb, dtype=torch.float64)
    vol = tet_volumes(verts, tets)
    box = 2.0 * 2.0 * 0.5
    assert (vol > 0).all(), f"{int((vol <= 0).sum())} tets not positively oriented"
    assert torch.allclose(vol, torch.full_like(vol, box / R ** 3 / 6))
    assert math.isclose(float(vol.sum()), box, rel_tol=1e-12)


@pytest.mark.parametrize("R", [1, 2, 4])
def test_tet_grid_conforming(R):
    verts, tets = tet_grid(R, dtype=torch.float64)
    # the 4 faces of each tet, wound outward for a positive tet
    faces = tets[:, [[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]]].reshape(-1, 3)
    key = torch.sort(faces, -1).values
    uniq, inverse, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    assert counts.max() == 2, "a triangle is a face of more than two tets"
    interior, boundary = uniq[counts == 2], uniq[counts == 1]
    # interior faces: the two tets lie on opposite sides, i.e. the face appears with opposite windings
    directed = {}
    for f in faces.tolist():
        directed.setdefault(tuple(sorted(f)), []).append(f)
    for k in interior.tolist():
        f0, f1 = directed[tuple(k)]
        assert not np.array_equal(np.roll(f1, -f1.index(f0[0])), f0), f"face {k}: both tets on the same side"
    # boundary faces: all three corners on one face plane of the box, 2 triangles per boundary square
    p = verts[boundary]  # [B, 3, 3]
    on_plane = ((p == 1.0).all(1) | (p == -1.0).all(1)).any(-1)
    assert on_plane.all()
    assert boundary.shape[0] == 6 * 2 * R ** 2
    assert interior.shape[0] * 2 + boundary.shape[0] == 4 * tets.shape[0]


def test_tet_grid_device_dtype_and_speed():
    verts, tets = tet_grid(2, dtype=torch.float64, device="cpu")
    assert verts.dtype == torch.float64 and tets.device.type == "cpu"
    verts, tets = tet_grid(40)  # vectorised: 384,000 tets at once
    assert tets.shape[0] == 6 * 40 ** 3 and int(tets.max()) == 41 ** 3 - 1


# ------------------------------------------------------------------------------------------ marching cases

def independent_cut(p, s):
    """Reference for one tet: the crossing points and the cut polygon's area and normal direction."""
    inside = s < 0
    pts = []
    for a, b in itertools.combinations(range(4), 2):
        if inside[a] != inside[b]:
            t = s[a] / (s[a] - s[b])
            pts.append(p[a] + t * (p[b] - p[a]))
    pts = np.array(pts)
    out_dir = p[~inside].mean(0) - p[inside].mean(0)
    # area of the convex cut polygon from its 2-D projection on its own plane
    centre = pts.mean(0)
    u, _, vt = np.linalg.svd(pts - centre)
    flat = (pts - centre) @ vt[:2].T
    angles = np.arctan2(flat[:, 1], flat[:, 0])
    ring = flat[np.argsort(angles)]
    area = 0.5 * abs(np.sum(ring[:, 0] * np.roll(ring[:, 1], -1) - ring[:, 1] * np.roll(ring[:, 0], -1)))
    return pts, area, out_dir


@pytest.mark.parametrize("code", range(16))
def test_marching_every_case(code):
    """Each of the 16 sign cases on random positive tets: right crossing points, triangles that tile the cut
    polygon (areas add up, no overlap) and normals pointing to the positive side."""
    gen = torch.Generator().manual_seed(code)
    for _ in range(5):
        p = torch.rand(4, 3, generator=gen, dtype=torch.float64)
        tet = torch.tensor([[0, 1, 2, 3]])
        if tet_volumes(p, tet)[0] < 0:
            p = p[[1, 0, 2, 3]]
        mag = 0.1 + torch.rand(4, generator=gen, dtype=torch.float64)
        sign = torch.tensor([-1.0 if code >> i & 1 else 1.0 for i in range(4)], dtype=torch.float64)
        s = sign * mag
        v, f, e = marching_tets(p, tet, s, return_edges=True)
        n_in = bin(code).count("1")
        if n_in in (0, 4):
            assert v.shape == (0, 3) and f.shape == (0, 3) and e.shape == (0, 2)
            continue
        pts, area, out_dir = independent_cut(p.numpy(), s.numpy())
        assert v.shape[0] == len(pts) == (3 if n_in != 2 else 4)
        assert f.shape[0] == (1 if n_in != 2 else 2)
        dist = np.linalg.norm(v.numpy()[:, None] - pts[None], axis=-1)
        assert (dist.min(1) < 1e-12).all() and (dist.min(0) < 1e-12).all()
        tri = v[f].numpy()
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        assert (normals @ out_dir > 0).all(), f"case {code}: a triangle faces the inside"
        assert math.isclose(0.5 * np.linalg.norm(normals, axis=-1).sum(), area, rel_tol=1e-9)
        for a, b in e.tolist():
            assert a < b and (s[a] < 0) != (s[b] < 0)


# ------------------------------------------------------------------------------------------ marching meshes

def check_closed_mesh(v, f):
    """Every undirected edge in exactly two faces, once each way; no duplicate vertices; all used."""
    d = mesh_edges(f)
    directed = {tuple(x) for x in d.tolist()}
    assert len(directed) == d.shape[0], "a directed edge appears twice (inconsistent winding)"
    assert all((b, a) in directed for a, b in directed), "an edge with a single face"
    assert torch.unique(v, dim=0).shape[0] == v.shape[0], "duplicate vertices"
    assert torch.unique(f).shape[0] == v.shape[0], "unused vertices"
    m = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert m.is_watertight and m.is_winding_consistent
    return m


@pytest.mark.parametrize("R", [16, 32])
def test_marching_sphere(R):
    verts, tets = tet_grid(R)
    radius, center = 0.6, torch.tensor([0.03, -0.02, 0.05])
    sdf = sphere_sdf(verts, center.tolist(), radius)
    v, f, e, ft = marching_tets(verts, tets, sdf, return_edges=True, return_face_tets=True)
    m = check_closed_mesh(v, f)
    n_edges = np.unique(np.sort(mesh_edges(f), 1), axis=0).shape[0]
    assert v.shape[0] - n_edges + f.shape[0] == 2
    assert m.euler_number == 2
    vol, exact = signed_volume(v, f), 4.0 / 3.0 * math.pi * radius ** 3
    assert vol > 0, "faces wound inward"
    assert abs(vol / exact - 1.0) < (0.04 if R == 16 else 0.015), f"volume {vol} vs {exact}"
    assert math.isclose(float(m.volume), vol, rel_tol=1e-6)
    cell = 2.0 / R
    r = (v - center).norm(dim=-1)
    assert ((r - radius).abs() < cell).all()
    # normals outward: face normals agree with the radial direction
    tri = v[f]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((n * (tri.mean(1) - center)).sum(-1) > 0).float().mean() > 0.99
    # bookkeeping: each vertex on its grid edge, each face's vertices on edges of its tet
    t = ((v - verts[e[:, 0]]).norm(dim=-1) / (verts[e[:, 1]] - verts[e[:, 0]]).norm(dim=-1))
    assert ((t >= 0) & (t <= 1)).all() and ((sdf[e[:, 0]] < 0) != (sdf[e[:, 1]] < 0)).all()
    grid_keys = set(map(tuple, grid_edges(tets).tolist()))
    assert set(map(tuple, e.tolist())) <= grid_keys and len(set(map(tuple, e.tolist()))) == e.shape[0]
    corners = tets[ft]  # [F, 4]
    assert (e[f][..., None] == corners[:, None, None, :]).any(-1).all()


def test_marching_torus_genus_one():
    verts, tets = tet_grid(32)
    v, f = marching_tets(verts, tets, torus_sdf(verts))
    m = check_closed_mesh(v, f)
    assert m.euler_number == 0
    exact = 2 * math.pi ** 2 * 0.55 * 0.22 ** 2
    assert abs(signed_volume(v, f) / exact - 1.0) < 0.05


def test_marching_two_spheres_and_boundary():
    verts, tets = tet_grid(20)
    sdf = torch.minimum(sphere_sdf(verts, (-0.45, 0.0, 0.0), 0.3), sphere_sdf(verts, (0.45, 0.0, 0.0), 0.3))
    v, f = marching_tets(verts, tets, sdf)
    assert check_closed_mesh(v, f).euler_number == 4
    # inverted sdf: the same surface wound the other way (negative volume)
    v2, f2 = marching_tets(verts, tets, -sdf)
    assert torch.equal(v2, v) and signed_volume(v2, f2) == pytest.approx(-signed_volume(v, f), rel=1e-9)
    # a sphere bigger than the box: the surface is cut open where it meets the box
    v, f = marching_tets(verts, tets, sphere_sdf(verts, (0, 0, 0), 1.2))
    m = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert m.is_winding_consistent and not m.is_watertight


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_marching_empty(sign):
    verts, tets = tet_grid(3)
    sdf = (sign * (verts.norm(dim=-1) + 0.1)).requires_grad_()
    v, f, e, ft = marching_tets(verts, tets, sdf, return_edges=True, return_face_tets=True)
    assert v.shape == (0, 3) and f.shape == (0, 3) and f.dtype == torch.int64
    assert e.shape == (0, 2) and ft.shape == (0,)
    v.sum().backward()
    assert torch.equal(sdf.grad, torch.zeros_like(sdf))
    v, f = marching_tets(verts, tets[:0], sdf.detach())
    assert v.shape == (0, 3) and f.shape == (0, 3)


def test_marching_gradcheck():
    verts, tets = tet_grid(3, dtype=torch.float64)
    sdf = sphere_sdf(verts, (0.05, -0.1, 0.08), 0.7)
    assert sdf.abs().min() > 1e-3  # finite differences do not flip a sign
    verts.requires_grad_()
    sdf.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, s: marching_tets(x, tets, s)[0], (verts, sdf), eps=GRADCHECK_EPS,
                                    atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def test_marching_loss_gradient_matches_finite_differences():
    """A loss on the mesh (positions, regularisers) against central differences through the whole extraction."""
    verts, tets = tet_grid(4, dtype=torch.float64)
    sdf = sphere_sdf(verts, (0.05, -0.1, 0.08), 0.62)
    num_mesh_verts = marching_tets(verts, tets, sdf)[0].shape[0]  # the same for every perturbation below
    w = torch.randn(num_mesh_verts, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(x, s):
        v, f = marching_tets(x, tets, s)
        return (w * v).sum() + normal_consistency(v, f) + laplacian_loss(v, f)

    x, s = verts.clone().requires_grad_(), sdf.clone().requires_grad_()
    gx, gs = torch.autograd.grad(loss(x, s), (x, s))
    h = 1e-6
    gen = torch.Generator().manual_seed(1)
    for i in torch.randint(0, verts.shape[0], (12,), generator=gen).tolist():
        d = torch.zeros_like(sdf)
        d[i] = h
        fd = (loss(verts, sdf + d) - loss(verts, sdf - d)) / (2 * h)
        assert math.isclose(float(fd), float(gs[i]), rel_tol=1e-5, abs_tol=1e-6), (i, float(fd), float(gs[i]))
        for c in range(3):
            dx = torch.zeros_like(verts)
            dx[i, c] = h
            fd = (loss(verts + dx, sdf) - loss(verts - dx, sdf)) / (2 * h)
            assert math.isclose(float(fd), float(gx[i, c]), rel_tol=1e-5, abs_tol=1e-6)
    assert gs.abs().sum() > 0 and gx.abs().sum() > 0


def test_marching_deformed_grid():
    """A small deformation of the grid keeps a closed mesh whose vertices follow the deformed edges."""
    verts, tets = tet_grid(12, dtype=torch.float64)
    offset = 0.2 * (2.0 / 12) * (torch.rand(verts.shape, generator=torch.Generator().manual_seed(3),
                                            dtype=torch.float64) - 0.5)
    moved = verts + offset
    assert (tet_volumes(moved, tets) > 0).all()
    sdf = sphere_sdf(verts.float(), (0, 0, 0), 0.55).double()
    v, f, e = marching_tets(moved, tets, sdf, return_edges=True)
    check_closed_mesh(v, f)
    sa, sb = sdf[e[:, 0]][:, None], sdf[e[:, 1]][:, None]
    assert torch.allclose(v, moved[e[:, 0]] + sa / (sa - sb) * (moved[e[:, 1]] - moved[e[:, 0]]))


# ------------------------------------------------------------------------------------------ regularisers

def brute_sign_loss(sdf, edges):
    terms = []
    for a, b in edges:
        sa, sb = float(sdf[a]), float(sdf[b])
        if (sa < 0) != (sb < 0):
            for x, y in ((sa, sb), (sb, sa)):
                target = 1.0 if y >= 0 else 0.0
                p = 1.0 / (1.0 + math.exp(-x))
                terms.append(-(target * math.log(p) + (1 - target) * math.log(1 - p)))
    return sum(terms) / len(terms) if terms else 0.0


def test_sdf_sign_loss_hand_example():
    tets = torch.tensor([[0, 1, 2, 3]])
    sdf = torch.tensor([-1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    # edges 0-1, 0-2, 0-3 cross; per edge: softplus(1) (s_a = -1 towards outside) + softplus(s_b) (towards inside)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (3 * softplus(1.0) + softplus(2.0) + softplus(3.0) + softplus(0.5)) / 6
    assert math.isclose(float(sdf_sign_loss(sdf, tets)), expected, rel_tol=1e-12)


def test_sdf_sign_loss_matches_brute_force_and_edges_option():
    verts, tets = tet_grid(5, dtype=torch.float64)
    sdf = sphere_sdf(verts, (0.1, 0.0, -0.05), 0.5) * 3.0
    edges = grid_edges(tets)
    got = sdf_sign_loss(sdf, tets)
    assert math.isclose(float(got), brute_sign_loss(sdf, edges.tolist()), rel_tol=1e-10)
    assert math.isclose(float(sdf_sign_loss(sdf, tets, edges=edges)), float(got), rel_tol=1e-12)
    s = sdf.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sdf_sign_loss(x, tets), (s,), eps=GRADCHECK_EPS,
                                    atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def test_sdf_sign_loss_zero_cases():
    verts, tets = tet_grid(2)
    sdf = (verts.norm(dim=-1) + 1.0).requires_grad_()
    loss = sdf_sign_loss(sdf, tets)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(sdf.grad, torch.zeros_like(sdf))
    empty = torch.zeros(0, requires_grad=True)
    assert sdf_sign_loss(empty, torch.zeros(0, 4, dtype=torch.long)).item() == 0.0
    assert sdf_sign_loss(sdf, tets, edges=torch.zeros(0, 2, dtype=torch.long)).item() == 0.0


SQUARE = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=torch.float64)
SQUARE_FACES = torch.tensor([[0, 1, 2], [1, 3, 2]])


def test_normal_consistency_hand_examples():
    assert float(normal_consistency(SQUARE, SQUARE_FACES)) == 0.0
    # fold the square along its diagonal 1-2: lift corner 3; the angle between the normals is known
    for height in (0.5, 1.0, 3.0):
        v = SQUARE.clone()
        v[3, 2] = height
        n0 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        n1 = torch.linalg.cross(v[3] - v[1], v[2] - v[1])
        expected = 1.0 - float(n0 @ n1 / n1.norm())
        assert math.isclose(float(normal_consistency(v, SQUARE_FACES)), expected, rel_tol=1e-12)
    # a 90-degree fold along a straight edge: two half-squares at right angles
    v = torch.tensor([[0.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    assert math.isclose(float(normal_consistency(v, torch.tensor([[0, 1, 3], [0, 2, 1]]))), 1.0, rel_tol=1e-12)
    # regular tetrahedron, outward faces: adjacent normals at cos = -1/3 on all 6 edges
    v = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    assert math.isclose(float(normal_consistency(v, f)), 4.0 / 3.0, rel_tol=1e-12)


def brute_normal_consistency(v, f):
    n = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = n / n.norm(dim=-1, keepdim=True)
    around = {}
    for i, face in enumerate(f.tolist()):
        for a, b in ((face[0], face[1]), (face[1], face[2]), (face[2], face[0])):
            around.setdefault((min(a, b), max(a, b)), []).append(i)
    terms = [1.0 - float(n[i] @ n[j]) for fs in around.values() for i, j in itertools.combinations(fs, 2)]
    return sum(terms) / len(terms)


def brute_laplacian(v, f):
    nbrs = {}
    for face in f.tolist():
        for a, b in itertools.permutations(face, 2):
            nbrs.setdefault(a, set()).add(b)
    terms = [float((v[i] - v[sorted(js)].mean(0)).square().sum()) for i, js in nbrs.items()]
    return sum(terms) / len(terms)


def test_regularisers_match_brute_force_on_a_sphere_mesh():
    verts, tets = tet_grid(6, dtype=torch.float64)
    v, f = marching_tets(verts, tets, sphere_sdf(verts))
    assert math.isclose(float(normal_consistency(v, f)), brute_normal_consistency(v, f), rel_tol=1e-10)
    assert math.isclose(float(laplacian_loss(v, f)), brute_laplacian(v, f), rel_tol=1e-10)
    # a non-manifold fan: three faces around edge 0-1 give three pairs
    fan = torch.tensor([[0.0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [-1, -1, 0]], dtype=torch.float64)
    ff = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 1, 4]])
    assert math.isclose(float(normal_consistency(fan, ff)), brute_normal_consistency(fan, ff), rel_tol=1e-12)


def test_laplacian_hand_examples():
    tri = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)
    # vertex 0: |(0.5, 0.5)|^2 = 0.5; vertices 1, 2: |(1, -0.5)|^2 = 1.25
    assert math.isclose(float(laplacian_loss(tri, torch.tensor([[0, 1, 2]]))), 1.0, rel_tol=1e-12)
    # a vertex used by no face has no neighbours and is left out of the mean
    with_isolated = torch.cat([tri, torch.tensor([[5.0, 5.0, 5.0]], dtype=torch.float64)])
    assert math.isclose(float(laplacian_loss(with_isolated, torch.tensor([[0, 1, 2]]))), 1.0, rel_tol=1e-12)
    # a flat regular hexagon fan: the centre is its neighbours' mean; a rim vertex r_k has neighbours 0, r_{k-1},
    # r_{k+1} with r_{k-1} + r_{k+1} = r_k, so it sits 2/3 |r_k| = 2/3 from their mean
    hexagon = torch.tensor([[0.0, 0, 0]] + [[math.cos(k * math.pi / 3), math.sin(k * math.pi / 3), 0]
                                            for k in range(6)], dtype=torch.float64)
    fan = torch.tensor([[0, 1 + k, 1 + (k + 1) % 6] for k in range(6)])
    flat = float(laplacian_loss(hexagon, fan))
    assert math.isclose(flat, 6 * (2 / 3) ** 2 / 7, rel_tol=1e-12)
    lifted = hexagon.clone()
    lifted[0, 2] = 0.3
    # z-part: centre 0.3^2; each rim vertex has neighbours centre + 2 rim: z offset 0.3 / 3
    assert math.isclose(float(laplacian_loss(lifted, fan)) - flat, (0.09 + 6 * (0.1 ** 2)) / 7, rel_tol=1e-12)
    assert math.isclose(flat, brute_laplacian(hexagon, fan), rel_tol=1e-12)


def test_regularisers_gradcheck_and_zero_size():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0.2], [0, 1, 0], [1, 1.1, 0.5], [0.4, 0.6, -0.7]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [1, 3, 2], [0, 2, 4], [0, 4, 1]])
    v.requires_grad_()
    for fn in (normal_consistency, laplacian_loss):
        assert torch.autograd.gradcheck(lambda x: fn(x, f), (v,), eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL,
                                        rtol=GRADCHECK_RTOL)
        for verts in (v, torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)):
            out = fn(verts, torch.zeros(0, 3, dtype=torch.long))
            assert out.item() == 0.0
            (grad,) = torch.autograd.grad(out, verts)
            assert torch.equal(grad, torch.zeros_like(verts))
    # a single face has no neighbour across an edge
    assert normal_consistency(v, f[:1]).item() == 0.0


# ------------------------------------------------------------------------------------------ sdf_from_density

def test_sdf_from_density():
    verts, tets = tet_grid(16)
    calls = []

    def density(x):
        calls.append(x.shape[0])
        return 100.0 * (0.5 - x.norm(dim=-1))

    sdf = sdf_from_density(verts, density, threshold=10.0, chunk=1000)
    assert sdf.shape == (verts.shape[0],) and not sdf.requires_grad
    assert max(calls) == 1000 and sum(calls) == verts.shape[0]
    assert torch.allclose(sdf, 10.0 - 100.0 * (0.5 - verts.norm(dim=-1)), atol=1e-5)
    # the level density == threshold becomes the zero level set: a sphere of radius 0.4
    v, f = marching_tets(verts, tets, sdf)
    v_ref, f_ref = marching_tets(verts, tets, 100.0 * (verts.norm(dim=-1) - 0.4))
    assert torch.equal(f, f_ref) and torch.allclose(v, v_ref, atol=1e-6)
    column = sdf_from_density(verts, lambda x: density(x)[:, None], threshold=10.0)
    assert torch.equal(column, sdf_from_density(verts, density, threshold=10.0))


# ------------------------------------------------------------------------------------------ bad inputs

VERTS, TETS = tet_grid(1)
SDF = VERTS.norm(dim=-1) - 0.5


@pytest.mark.parametrize("call, error, match", [
    (lambda: tet_grid(0), ValueError, "resolution"),
    (lambda: tet_grid(2.0), TypeError, "resolution"),
    (lambda: tet_grid(True), TypeError, "resolution"),
    (lambda: tet_grid(2, aabb=(1, 0, 0, 0, 1, 1)), ValueError, "aabb"),
    (lambda: tet_grid(2, aabb=(0, 0, 1, 1)), ValueError, "aabb"),
    (lambda: tet_grid(2, dtype=torch.int32), TypeError, "dtype"),
    (lambda: marching_tets(VERTS[:, :2], TETS, SDF), ValueError, "verts"),
    (lambda: marching_tets(VERTS.long(), TETS, SDF), TypeError, "verts"),
    (lambda: marching_tets(VERTS.numpy(), TETS, SDF), TypeError, "verts"),
    (lambda: marching_tets(VERTS, TETS.float(), SDF), TypeError, "tets"),
    (lambda: marching_tets(VERTS, TETS[:, :3], SDF), ValueError, "tets"),
    (lambda: marching_tets(VERTS, TETS + 1, SDF), ValueError, "tets"),
    (lambda: marching_tets(VERTS, TETS - 1, SDF), ValueError, "tets"),
    (lambda: marching_tets(VERTS, TETS, SDF[:-1]), ValueError, "sdf"),
    (lambda: marching_tets(VERTS, TETS, SDF.double()), TypeError, "sdf"),
    (lambda: marching_tets(VERTS, TETS, SDF > 0), TypeError, "sdf"),
    (lambda: grid_edges(TETS[:, :2]), ValueError, "tets"),
    (lambda: grid_edges(TETS - 1), ValueError, "tets"),
    (lambda: sdf_sign_loss(SDF, TETS + 1), ValueError, "tets"),
    (lambda: sdf_sign_loss(SDF, TETS, edges=TETS), ValueError, "edges"),
    (lambda: sdf_sign_loss(SDF.long(), TETS), TypeError, "sdf"),
    (lambda: normal_consistency(VERTS, TETS[:, :3] + 100), ValueError, "faces"),
    (lambda: laplacian_loss(VERTS, TETS), ValueError, "faces"),
    (lambda: laplacian_loss(VERTS[0], TETS[:, :3]), ValueError, "verts"),
    (lambda: sdf_from_density(VERTS, None, 1.0), TypeError, "density_fn"),
    (lambda: sdf_from_density(VERTS, lambda x: x, 1.0), ValueError, "density_fn"),
    (lambda: sdf_from_density(VERTS, lambda x: x[:, 0], float("nan")), ValueError, "threshold"),
    (lambda: sdf_from_density(VERTS, lambda x: x[:, 0], 1.0, chunk=0), ValueError, "chunk"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_tet_edges_constant():
    assert sorted(TET_EDGES) == list(itertools.combinations(range(4), 2))
