"""DMTet geometry: a tetrahedral grid, differentiable marching tetrahedra and the surface regularisers.

Magic3D's fine stage (like DMTet and threestudio's ``tetrahedra-sdf-grid``) stores a signed distance on the
vertices of a deformable tetrahedral grid; marching tetrahedra turns its zero level set into a triangle mesh
whose vertex positions are differentiable w.r.t. the SDF values and the (deformed) grid vertex positions.

- :func:`tet_grid` builds the grid: every cube cell of a regular box grid cut into 6 tetrahedra (the
  Freudenthal / Kuhn subdivision), generated here, nothing downloaded.
- :func:`marching_tets` extracts the mesh (negative sdf = inside, normals point towards positive sdf).
- :func:`grid_edges` lists the grid's unique edges.
- :func:`sdf_sign_loss`, :func:`normal_consistency` and :func:`laplacian_loss` are the regularisers of the
  DMTet stage; :func:`sdf_from_density` initialises the SDF from a NeRF density, as Magic3D does.

Everything is plain, vectorised PyTorch and runs on any device; gradients flow by autograd.

Example:
    >>> verts, tets = tet_grid(32)                       # [33^3, 3], [6 * 32^3, 4]
    >>> sdf = (verts.norm(dim=-1) - 0.6).requires_grad_()
    >>> mesh_verts, faces = marching_tets(verts, tets, sdf)
    >>> loss = normal_consistency(mesh_verts, faces) + laplacian_loss(mesh_verts, faces)
    >>> loss.backward()                                  # sdf.grad is set
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

# The 6 edges of a tetrahedron (v0, v1, v2, v3) as pairs of local vertex indices; "local edge k" below.
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))

# Triangles of marching tetrahedra, indexed by the case code = sum of 2^i over the tet's inside vertices i
# (sdf < 0). Each row holds up to 2 triangles as triples of local edge indices (TET_EDGES), -1 pads.
# How it was derived (and how tests/render/test_tets.py re-derives it independently, geometrically):
# - one vertex i inside (codes 1, 2, 4, 8) or one outside (7, 11, 13, 14): one triangle through the 3 edges
#   at that vertex;
# - two inside i < j, two outside k < l (3, 5, 6, 9, 10, 12): the quad through edges (i,k), (i,l), (j,l),
#   (j,k), in that cyclic order, split along its (i,k)-(j,l) diagonal into 2 triangles;
# - each triangle is then wound so that on the positively oriented reference tet (0,0,0), (1,0,0), (0,1,0),
#   (0,0,1), with the edge midpoints as corners, its right-hand normal (c1 - c0) x (c2 - c0) points from the
#   centroid of the inside vertices to that of the outside ones. An affine map with positive determinant keeps
#   that sign, so the winding holds for every positively oriented tet; code 15 - c is code c reversed.
TRIANGLE_TABLE = (
    (-1, -1, -1, -1, -1, -1),  # 0  0000: all outside
    (0, 1, 2, -1, -1, -1),  # 1  0001
    (0, 4, 3, -1, -1, -1),  # 2  0010
    (1, 2, 4, 1, 4, 3),  # 3  0011
    (1, 3, 5, -1, -1, -1),  # 4  0100
    (0, 5, 2, 0, 3, 5),  # 5  0101
    (0, 4, 5, 0, 5, 1),  # 6  0110
    (2, 4, 5, -1, -1, -1),  # 7  0111
    (2, 5, 4, -1, -1, -1),  # 8  1000
    (0, 1, 5, 0, 5, 4),  # 9  1001
    (0, 5, 3, 0, 2, 5),  # 10 1010
    (1, 5, 3, -1, -1, -1),  # 11 1011
    (1, 3, 4, 1, 4, 2),  # 12 1100
    (0, 3, 4, -1, -1, -1),  # 13 1101
    (0, 2, 1, -1, -1, -1),  # 14 1110
    (-1, -1, -1, -1, -1, -1),  # 15 1111: all inside
)
TRIANGLE_COUNT = (0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0)


# ----------------------------------------------------------------------------------------------- input checks

def _check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise TypeError(f"resolution: expected an int, got {type(resolution).__name__}")
    if resolution < 1:
        raise ValueError(f"resolution: must be >= 1 (cells per axis), got {resolution}")
    return resolution


def _check_aabb(aabb) -> tuple[list[float], list[float]]:
    try:
        box = [float(x) for x in (aabb.detach().cpu().reshape(-1).tolist() if isinstance(aabb, torch.Tensor)
                                  else aabb)]
    except (TypeError, ValueError) as e:
        raise ValueError(f"aabb: expected 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax), got {aabb!r}") from e
    if len(box) != 6:
        raise ValueError(f"aabb: expected 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax), got {len(box)}")
    lo, hi = box[:3], box[3:]
    if not (all(math.isfinite(x) for x in box) and all(a < b for a, b in zip(lo, hi))):
        raise ValueError(f"aabb: needs finite bounds with min < max on every axis, got min {lo} max {hi}")
    return lo, hi


def _check_float(x, name: str, shape: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {shape}, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor {shape}, got {x.dtype}")
    return x


def _check_verts(verts, name: str = "verts") -> torch.Tensor:
    _check_float(verts, name, "[V, 3]")
    if verts.dim() != 2 or verts.shape[1] != 3:
        raise ValueError(f"{name}: expected shape [V, 3], got {list(verts.shape)}")
    return verts


def _check_index(idx, name: str, width: int, num_verts: int | None, device) -> torch.Tensor:
    """An integer tensor [N, width] (returned as int64) with entries in [0, num_verts)."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name}: expected an integer torch.Tensor [N, {width}], got {type(idx).__name__}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor [N, {width}] (int64 or int32), got {idx.dtype}")
    if idx.dim() != 2 or idx.shape[1] != width:
        raise ValueError(f"{name}: expected shape [N, {width}], got {list(idx.shape)}")
    if device is not None and idx.device != device:
        raise ValueError(f"{name}: on {idx.device}, expected the vertices' device {device}")
    idx = idx.long()
    if idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or (num_verts is not None and hi >= num_verts):
            bound = "" if num_verts is None else f" (V = {num_verts})"
            raise ValueError(f"{name}: vertex indices must lie in [0, V){bound}, found min {lo} max {hi}")
    return idx


def _check_sdf(sdf, num_verts: int, verts: torch.Tensor | None) -> torch.Tensor:
    _check_float(sdf, "sdf", "[V]")
    if sdf.dim() == 2 and sdf.shape[1] == 1:
        sdf = sdf[:, 0]
    if sdf.dim() != 1 or sdf.shape[0] != num_verts:
        raise ValueError(f"sdf: expected shape [V] = [{num_verts}] (one value per grid vertex), got {list(sdf.shape)}")
    if verts is not None:
        if sdf.dtype != verts.dtype:
            raise TypeError(f"sdf: dtype {sdf.dtype} differs from verts' {verts.dtype}")
        if sdf.device != verts.device:
            raise ValueError(f"sdf: on {sdf.device}, expected the vertices' device {verts.device}")
    return sdf


# ------------------------------------------------------------------------------------------------------ grid

def tet_grid(resolution: int, aabb=(-1, -1, -1, 1, 1, 1), device=None,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A conforming tetrahedral grid of an axis-aligned box: each cube cell cut into 6 tetrahedra.

    The box is divided into ``resolution`` cells per axis. Vertex ``(i, j, k)`` (``0 <= i, j, k <= R``) sits at
    ``min + (max - min) * (i, j, k) / R`` and has index ``(i * (R + 1) + j) * (R + 1) + k``. Cell ``(i, j, k)`` is
    cut around its main diagonal from corner ``(i, j, k)`` to ``(i + 1, j + 1, k + 1)``: for each permutation
    ``(a, b, c)`` of the axes, one tet walks from the low corner one unit step along ``a``, then ``b``, then
    ``c`` (the Freudenthal / Kuhn subdivision). Every cell is cut the same way, so two cells that share a
    square face cut it along the same diagonal and the grid is conforming: every interior triangle is a face of
    exactly two tets. Each tet's vertex order is positively oriented:
    ``det(v1 - v0, v2 - v0, v3 - v0) > 0`` (the volume is ``cell volume / 6``).

    Counts for ``R = resolution``: ``V = (R + 1)^3`` vertices, ``T = 6 R^3`` tets, ``7 R^3 + 9 R^2 + 3 R`` unique
    edges (per vertex: 3 axis edges, 3 face diagonals, 1 body diagonal). ``R = 128``: 2,146,689 vertices,
    12,582,912 tets (int64: 400 MB).

    Args:
        resolution: cells per axis, >= 1.
        aabb: ``(xmin, ymin, zmin, xmax, ymax, zmax)``, list, tuple or tensor of 6 numbers.
        device: where the tensors are made (default CPU).
        dtype: floating dtype of ``verts``.

    Returns:
        verts: [V, 3] ``dtype`` vertex positions.
        tets: [T, 4] int64 vertex indices; the 6 tets of a cell are consecutive, cells in vertex-index order.

    Example:
        >>> verts, tets = tet_grid(2)
        >>> verts.shape, tets.shape
        (torch.Size([27, 3]), torch.Size([48, 4]))
    """
    R = _check_resolution(resolution)
    lo, hi = _check_aabb(aabb)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    n = R + 1
    axes = [torch.linspace(lo[d], hi[d], n, dtype=torch.float64, device=device) for d in range(3)]
    verts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).to(dtype)

    cell = torch.arange(R, device=device)
    base = ((cell[:, None, None] * n + cell[None, :, None]) * n + cell[None, None, :]).reshape(-1)  # [R^3]
    step = (n * n, n, 1)  # index offset of one unit step along x, y, z
    tets = []
    for perm in itertools.permutations(range(3)):
        a, b, c = (step[p] for p in perm)
        tet = [base, base + a, base + a + b, base + a + b + c]
        # det(e_a, e_a + e_b, e_a + e_b + e_c) = det(e_a, e_b, e_c) = sign of the permutation
        inversions = sum(perm[i] > perm[j] for i in range(3) for j in range(i + 1, 3))
        if inversions % 2:
            tet[2], tet[3] = tet[3], tet[2]
        tets.append(torch.stack(tet, -1))
    return verts, torch.stack(tets, 1).reshape(-1, 4)


def _edge_keys(pairs: torch.Tensor, num_verts: int) -> torch.Tensor:
    """[..., 2] vertex pairs -> [...] int64 keys ``min * V + max`` (one key per undirected edge)."""
    a, b = pairs.min(-1).values, pairs.max(-1).values
    return a * num_verts + b


def grid_edges(tets: torch.Tensor) -> torch.Tensor:
    """The unique undirected edges of a tetrahedral mesh.

    Args:
        tets: [T, 4] integer vertex indices (>= 0).

    Returns:
        [E, 2] int64 edges ``(a, b)`` with ``a < b``, sorted by ``a`` then ``b``; [0, 2] for no tets.

    It sorts all ``6 T`` tet edges: a resolution-128 :func:`tet_grid` (75M keys) takes about 20 s on one CPU
    core, so compute it once per grid.

    Example:
        >>> grid_edges(torch.tensor([[0, 1, 2, 3]])).shape
        torch.Size([6, 2])
    """
    tets = _check_index(tets, "tets", 4, None, None)
    if tets.shape[0] == 0:
        return tets.new_zeros((0, 2))
    num_verts = int(tets.max()) + 1
    keys = torch.unique(_edge_keys(tets[:, TET_EDGES], num_verts).reshape(-1))
    return torch.stack([keys // num_verts, keys % num_verts], -1)


# ------------------------------------------------------------------------------------------ marching tets

def marching_tets(verts: torch.Tensor, tets: torch.Tensor, sdf: torch.Tensor, return_edges: bool = False,
                  return_face_tets: bool = False):
    """Differentiable marching tetrahedra: the triangle mesh of the zero level set of an SDF on a tet grid.

    A vertex is inside where ``sdf < 0`` (``sdf == 0`` counts as outside). On every grid edge ``(a, b)`` whose
    endpoints differ, one mesh vertex sits at the linear zero crossing

        ``p = (p_a s_b - p_b s_a) / (s_b - s_a)``

    shared by all tets around the edge, so the mesh has no duplicate vertices and is closed wherever the
    surface does not reach the grid's boundary. Each tet with mixed signs gives 1 or 2 triangles
    (:data:`TRIANGLE_TABLE`), wound so that their right-hand normals point towards positive sdf (outward);
    that holds for positively oriented tets, as :func:`tet_grid` makes them (a deformation that inverts a tet
    flips its triangles). ``mesh_verts`` is differentiable w.r.t. ``verts`` and ``sdf`` through the crossing
    formula; the connectivity (``faces``) is piecewise constant.

    Args:
        verts: [V, 3] floating grid vertex positions (possibly deformed).
        tets: [T, 4] integer (int64 or int32) vertex indices.
        sdf: [V] signed distance at the vertices, same dtype and device as ``verts`` ([V, 1] is accepted).
        return_edges: also return, for each mesh vertex, the grid edge it lies on.
        return_face_tets: also return, for each face, the tet it came from.

    Returns:
        mesh_verts: [M, 3] vertex positions, dtype of ``verts``.
        faces: [F, 3] int64 indices into ``mesh_verts``.
        edges: (with ``return_edges``) [M, 2] int64 grid vertex indices ``(a, b)``, ``a < b``, of the edge each
            mesh vertex lies on: ``mesh_verts[m] = crossing of verts[a], verts[b]`` (e.g. to texture or
            to re-evaluate a field on the surface).
        face_tets: (with ``return_face_tets``) [F] int64 index into ``tets`` of each face's tet.

        Without a crossing the mesh is empty: ``mesh_verts`` [0, 3], ``faces`` [0, 3].

    Raises:
        TypeError/ValueError: naming the argument, for wrong types, shapes, dtypes, devices or indices out
            of ``[0, V)``.

    Example:
        >>> verts, tets = tet_grid(16)
        >>> sdf = verts.norm(dim=-1) - 0.6
        >>> mesh_verts, faces = marching_tets(verts, tets, sdf)
        >>> mesh_verts.shape[1], faces.dtype
        (3, torch.int64)
    """
    verts = _check_verts(verts)
    num_verts = verts.shape[0]
    tets = _check_index(tets, "tets", 4, num_verts, verts.device)
    sdf = _check_sdf(sdf, num_verts, verts)
    device = verts.device

    with torch.no_grad():
        inside = sdf < 0  # [V]
        occ = inside[tets]  # [T, 4]
        code = (occ.long() * torch.tensor([1, 2, 4, 8], device=device)).sum(-1)  # [T]
        valid = (code > 0) & (code < 15)
        tet_ids = valid.nonzero()[:, 0]  # [Tv]
        code = code[tet_ids]
        # the 6 edges of each cut tet, merged across tets into unique grid edges
        keys = _edge_keys(tets[tet_ids][:, TET_EDGES], num_verts)  # [Tv, 6]
        ukeys, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
        ua, ub = ukeys // num_verts, ukeys % num_verts
        crossing = inside[ua] != inside[ub]
        mesh_id = torch.cumsum(crossing.long(), 0) - 1  # index of the mesh vertex on each crossing edge
        a, b = ua[crossing], ub[crossing]  # [M]

        local = mesh_id[inverse].reshape(-1, 6)  # [Tv, 6] mesh vertex on each local edge (garbage off-crossing)
        table = torch.tensor(TRIANGLE_TABLE, device=device)[code]  # [Tv, 6]
        count = torch.tensor(TRIANGLE_COUNT, device=device)[code]  # [Tv]
        corners = torch.gather(local, 1, table.clamp_min(0)).reshape(-1, 2, 3)  # [Tv, 2, 3]
        keep = torch.arange(2, device=device)[None, :] < count[:, None]  # [Tv, 2]
        faces = corners[keep]  # [F, 3]

    s_a, s_b = sdf[a][:, None], sdf[b][:, None]
    mesh_verts = (verts[a] * s_b - verts[b] * s_a) / (s_b - s_a)

    out = (mesh_verts, faces)
    if return_edges:
        out += (torch.stack([a, b], -1),)
    if return_face_tets:
        out += (tet_ids[:, None].expand(-1, 2)[keep],)
    return out


# ----------------------------------------------------------------------------------------------- regularisers

def sdf_sign_loss(sdf: torch.Tensor, tets: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """DMTet's SDF regulariser: pushes the SDF on both sides of the surface towards a clean sign change.

    Over the grid edges ``(a, b)`` whose endpoints differ in sign (inside: ``sdf < 0``), binary cross entropy
    between ``sigmoid(s_a)`` and the side of ``b`` (1 outside, 0 inside), and the same with ``a`` and ``b``
    swapped; the mean of these ``2 E'`` terms (``E'`` crossing edges). Threestudio adds the two directions'
    means, which is twice this value. No crossing edge (or no tets) gives 0, with a zero gradient.

    Args:
        sdf: [V] floating SDF at the grid vertices ([V, 1] accepted).
        tets: [T, 4] integer vertex indices; without ``edges``, the edges of the tets with mixed signs
            are used (the only ones that can change sign), found anew at each call.
        edges: optional [E, 2] precomputed edges, e.g. ``grid_edges(tets)`` computed once (the grid is fixed);
            then ``tets`` is not read.

    Returns:
        [] scalar loss, dtype of ``sdf``.

    Example:
        >>> verts, tets = tet_grid(8)
        >>> edges = grid_edges(tets)
        >>> loss = sdf_sign_loss(verts.norm(dim=-1) - 0.5, tets, edges=edges)
    """
    if not isinstance(sdf, torch.Tensor):
        raise TypeError(f"sdf: expected a torch.Tensor [V], got {type(sdf).__name__}")
    num_verts = sdf.shape[0] if sdf.dim() >= 1 else 0
    sdf = _check_sdf(sdf, num_verts, None)
    if edges is None:
        tets = _check_index(tets, "tets", 4, num_verts, sdf.device)
        with torch.no_grad():  # an edge whose sign changes only belongs to tets whose signs are mixed
            inside_count = (sdf < 0)[tets].sum(-1)
            edges = grid_edges(tets[(inside_count > 0) & (inside_count < 4)])
    else:
        edges = _check_index(edges, "edges", 2, num_verts, sdf.device)
    s = sdf[edges]  # [E, 2]
    inside = s < 0
    s = s[inside[:, 0] != inside[:, 1]]  # [E', 2]
    if s.shape[0] == 0:
        return sdf.sum() * 0.0
    logits = torch.cat([s[:, 0], s[:, 1]])
    targets = torch.cat([s[:, 1] >= 0, s[:, 0] >= 0]).to(sdf.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets)


def _check_mesh(verts, faces) -> tuple[torch.Tensor, torch.Tensor]:
    verts = _check_verts(verts)
    faces = _check_index(faces, "faces", 3, verts.shape[0], verts.device)
    return verts, faces


def normal_consistency(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` between the unit normals of faces that share an edge.

    Every pair of faces around an edge counts once (one pair per edge on a manifold mesh). A flat mesh gives 0,
    a fold of dihedral angle ``theta`` between the two normals gives ``1 - cos(theta)``. The normals are the
    right-hand ``(v1 - v0) x (v2 - v0)``, normalised (a zero-area face has a zero normal, giving 1 - 0).

    Args:
        verts: [V, 3] floating vertex positions.
        faces: [F, 3] integer vertex indices.

    Returns:
        [] scalar, dtype of ``verts``; 0 (with zero gradient) when no two faces share an edge.

    Example:
        >>> verts = torch.tensor([[0., 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
        >>> normal_consistency(verts, torch.tensor([[0, 1, 2], [1, 3, 2]]))
        tensor(0.)
    """
    verts, faces = _check_mesh(verts, faces)
    num_verts, num_faces = verts.shape[0], faces.shape[0]
    with torch.no_grad():
        keys = _edge_keys(faces[:, [[0, 1], [1, 2], [2, 0]]], num_verts).reshape(-1)  # [3F]
        keys, order = torch.sort(keys)
        face_of = order // 3  # face of each sorted edge occurrence
        pairs = []
        # faces sharing an edge are consecutive after sorting: pair occurrence i with i + d for each gap d
        for d in range(1, 3 * num_faces):
            same = keys[d:] == keys[:-d]
            if not bool(same.any()):
                break
            idx = same.nonzero()[:, 0]
            pairs.append(torch.stack([face_of[idx], face_of[idx + d]], -1))
    if not pairs:
        return verts.sum() * 0.0
    pairs = torch.cat(pairs)
    tri = verts[faces]  # [F, 3, 3]
    normals = F.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), dim=-1)
    cos = (normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(-1)
    return (1.0 - cos).mean()


def laplacian_loss(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Uniform Laplacian smoothness: mean squared distance of each vertex to the mean of its neighbours.

    ``loss = mean_i || v_i - (1 / |N(i)|) sum_{j in N(i)} v_j ||^2`` over the vertices that have neighbours,
    where ``N(i)`` are the vertices joined to ``i`` by a face edge (each counted once); vertices used by no
    face are left out.

    Args:
        verts: [V, 3] floating vertex positions.
        faces: [F, 3] integer vertex indices.

    Returns:
        [] scalar, dtype of ``verts``; 0 (with zero gradient) for no faces.

    Example:
        >>> verts = torch.tensor([[0., 0, 0], [1, 0, 0], [0, 1, 0]])
        >>> laplacian_loss(verts, torch.tensor([[0, 1, 2]]))  # (0.5 + 1.25 + 1.25) / 3
        tensor(1.)
    """
    verts, faces = _check_mesh(verts, faces)
    num_verts = verts.shape[0]
    if faces.shape[0] == 0:
        return verts.sum() * 0.0
    with torch.no_grad():
        keys = torch.unique(_edge_keys(faces[:, [[0, 1], [1, 2], [2, 0]]], num_verts).reshape(-1))
        a, b = keys // num_verts, keys % num_verts
        src = torch.cat([a, b])  # each undirected edge in both directions
        dst = torch.cat([b, a])
        degree = torch.zeros(num_verts, dtype=verts.dtype, device=verts.device).index_add_(
            0, src, torch.ones_like(src, dtype=verts.dtype))
        used = degree > 0
    neighbour_sum = torch.zeros_like(verts).index_add(0, src, verts[dst])
    delta = verts[used] - neighbour_sum[used] / degree[used, None]
    return delta.square().sum(-1).mean()


# --------------------------------------------------------------------------------------------- initialisation

@torch.no_grad()
def sdf_from_density(verts: torch.Tensor, density_fn, threshold: float, chunk: int = 262144) -> torch.Tensor:
    """Initial SDF on the grid from a NeRF density, as Magic3D's fine stage starts: ``sdf = threshold - density``.

    The level set ``density == threshold`` (the coarse NeRF's surface) becomes the zero level set, with the
    dense inside negative. The values are not normalised to distances: like threestudio we keep the raw
    difference, which only the sign and the crossing positions of matter to :func:`marching_tets`; rescale it
    (e.g. clamp or divide by a typical density) if the optimiser expects distance-like magnitudes. Evaluated
    without gradients (an initialisation), ``chunk`` points per call.

    Args:
        verts: [V, 3] floating grid vertex positions.
        density_fn: callable ``points [N, 3] -> [N]`` (or [N, 1]) densities, e.g. ``field.density``.
        threshold: the density level of the surface (finite number).
        chunk: points per ``density_fn`` call, >= 1.

    Returns:
        [V] SDF, dtype and device of ``verts``, detached.

    Example:
        >>> verts, tets = tet_grid(32)
        >>> sdf = sdf_from_density(verts, field.density, threshold=25.0)
        >>> sdf = torch.nn.Parameter(sdf)
    """
    verts = _check_verts(verts)
    if not callable(density_fn):
        raise TypeError(f"density_fn: expected a callable points [N, 3] -> [N], got {type(density_fn).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int):
        raise TypeError(f"chunk: expected an int, got {type(chunk).__name__}")
    if chunk < 1:
        raise ValueError(f"chunk: must be >= 1, got {chunk}")
    out = []
    for s in range(0, verts.shape[0], chunk):
        pts = verts[s:s + chunk]
        d = density_fn(pts)
        if not isinstance(d, torch.Tensor) or d.numel() != pts.shape[0]:
            got = list(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise ValueError(f"density_fn: expected [N] = [{pts.shape[0]}] densities, got {got}")
        out.append(d.reshape(-1).to(device=verts.device, dtype=verts.dtype))
    density = torch.cat(out) if out else verts.new_zeros((0,))
    return float(threshold) - density
