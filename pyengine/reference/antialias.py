"""Pure-PyTorch analytic antialiasing, the specification of ``antialias`` (nvdiffrast's
``antialias``: Laine et al. 2020, "Modular Primitives for High-Performance Differentiable
Rendering", section 3.4).

Inputs: ``color [B, H, W, C]``, ``rast [B, H, W, 4]`` from ``rasterize`` (``(u, v, z/w, id)`` with
``id = triangle + 1``, 0 for background), ``pos [Bp, V, 4]`` clip-space vertices (``Bp = 1``: one
mesh for every image, or ``Bp = B``), ``tri [T, 3]`` and ``topology [T, 3]`` (see
``antialias_topology``). Image coordinates: pixel (row ``py``, column ``px``) has its centre at
``(px + 0.5, py + 0.5)`` in pixel units, NDC ``X = (2 px + 1) / W - 1``, ``Y = (2 py + 1) / H - 1``
(row 0 at ``y = -1``), as in ``rasterize``.

Rules, per pair of neighbouring pixels ``p0 = (b, py, px)`` and ``p1`` = its right neighbour
``(b, py, px + 1)`` (direction ``d = 0``) or its lower neighbour ``(b, py + 1, px)`` (``d = 1``), both
inside the image:

1. Ids: ``i0, i1`` = rast's id channel rounded to the nearest integer. The pair is a discontinuity
   when ``i0 != i1``; it is skipped (here and in the kernels) unless both ids lie in ``[0, T]``
   (``antialias(validate=True)`` rejects other ids up front).
2. The triangle: ``t = i0 - 1`` when only p0 is covered, ``t = i1 - 1`` when only p1 is; when both
   are, the one with the smaller rast depth ``z/w``, ties going to p1's (nvdiffrast:
   ``z0 < z1 ? t0 : t1``). Its pixel is the *reference pixel* ``r`` and ``ds = +1`` if r = p0,
   ``ds = -1`` if r = p1 (the direction from r towards the other pixel, along the pair's axis).
   The pair is skipped when a vertex index of t lies outside ``[0, V)``.
3. Projection to pixel space, relative to r's centre: for a vertex ``(x, y, z, w)``,
   ``iw = 1 / w``, ``X = (x iw) xh - fx``, ``Y = (y iw) yh - fy`` with ``xh = W / 2``, ``yh = H / 2``,
   ``fx = (rx + 0.5) - xh``, ``fy = (ry + 0.5) - yh``. No clipping: a vertex behind the camera
   (``w <= 0``) projects as the formula says.
4. Silhouettes: edge k of ``t = (v0, v1, v2)`` is the edge opposite vertex k, from ``v_{k+1}`` to
   ``v_{k+2}`` (indices mod 3). Its wing ``o_k`` is ``topology[t, k]``, the opposite vertex of the
   neighbouring triangle across that edge, or ``v_k`` itself when there is none (or the index is
   outside ``[0, V)``). With ``bb`` = the doubled signed area of ``(v0, v1, v2)`` in pixel space
   and ``a_k`` = that of the triangle with ``v_k`` replaced by ``o_k``, edge k is a silhouette
   when ``a_k`` and ``bb`` have the same sign bit: the neighbour folds back over the edge as seen
   from the camera (the two triangles face opposite ways), or there is no neighbour
   (``a_k = bb``).
5. The crossing: for ``d = 1`` swap X and Y of the three vertices, so that the pair lies along the
   X axis with r at the origin and the other pixel at ``X = ds``. For edge k from ``(xs, ys)`` to
   ``(xe, ye)``: ``dx = xe - xs``, ``dy = ye - ys``, ``q = xs dy - ys dx``, ``n = ds q``. The edge
   crosses the axis when ``ys`` and ``ye`` have different sign bits; there it crosses at
   ``X = q / dy``, i.e. at the fraction ``n / dy`` of the way from r towards the other pixel.
   Among the crossing edges the one with the largest fraction is chosen (the exit of the axis
   from the triangle towards the other pixel), comparing ``n_i / dy_i > n_j / dy_j`` as
   ``(n_i dy_j > n_j dy_i) == (dy_i and dy_j have the same sign bit)``; ``di = 2`` if edge 2 beats
   edges 0 and 1, else ``di = 1`` if edge 1 beats edge 0, else ``di = 0`` (a crossing edge beats
   a non-crossing one, which beats nothing; nvdiffrast writes the non-crossing ones as
   ``-FLT_MAX / 1``, the same order for finite inputs).
6. The blend: the pair is blended when edge di crosses, is a silhouette and ``|dy| >= |dx|``
   (edges closer to the axis are the other direction's business), and ``dc = n / dy`` lies in
   ``(-1/16, 1 + 1/16)`` (nvdiffrast's tolerance). Then ``dc`` is clamped to ``[0, 1]``,
   ``alpha = ds (0.5 - dc)``, and the *target* ``p0`` if ``alpha > 0``, else ``p1``, gets
   ``alpha (color[p1] - color[p0])`` added: the pixel on the far side of the crossing's midpoint
   takes the other pixel's colour in proportion to the distance. All blends read the input
   colours; a pixel sums the blends of its (up to four) pairs.
7. Gradients: to color, through the blends (and the identity). To pos, through the crossing
   position only: ``alpha = ds / 2 - q / dy`` as a function of the two endpoints of edge di, with
   nvdiffrast's regularised ``1 / (dy + copysign(eps, dy))`` in place of ``1 / dy``, ``eps =
   pos_grad_eps`` (nvdiffrast: 1e-3 pixel; 0 gives the exact derivative of the forward): the
   gradient is that of ``-q / (dy + copysign(eps, dy))``, which differs from the exact derivative
   by a relative ``eps / |dy|`` (``dy`` in pixels, the edge's extent across the pair), more
   where several blends of a pixel cancel. No gradient when ``|alpha| >= 0.5`` (``dc``
   clamped). Coverage, the choice of triangle and edge, and the silhouette tests are piecewise
   constant and carry no gradient; nor does rast.

Continuity: when an edge moves across a pixel centre, coverage changes and the blend passes from
one pair to the next with the same value, so the output is continuous in pos there (a step of half
a pixel in alpha meets a step of half a pixel in coverage). As in nvdiffrast it jumps where that
hand-over has no pair (a crossing between a border pixel's centre and the image's edge), where the
chosen edge changes (an edge turning through 45 degrees, the corners near vertices) and where an
edge meets another triangle (only the nearer pixel's triangle's edges are looked at).

Where this differs from nvdiffrast (its CUDA kernels, read to establish the rules above): pairs
with an out-of-range id or vertex index are skipped (nvdiffrast reads them or bails differently);
at ``alpha == 0`` exactly (``dc = 1/2``) the position gradient is kept (nvdiffrast drops it when
r = p0, keeps it when r = p1, by the sign of the zero); and the topology of an edge shared by more
than two triangles is fixed by triangle order (``antialias_topology``), where nvdiffrast's hash
keeps whichever two the GPU inserted first. ``pos_grad_eps`` is an addition (nvdiffrast's
regulariser is fixed at 1e-3). nvdiffrast works in float32 only; float64 is computed by the same
formulas in float64.

Method: all pairs of all images at once (memory ``O(B H W)``); discrete decisions on detached
values in the order written above (one rounding per operation, as the kernels do, so they agree
on every decision), then the blend weights carry the gradient through a straight-through term
whose value is exactly zero.
"""

from __future__ import annotations

import torch

__all__ = ["antialias", "antialias_fwd", "antialias_topology"]

# nvdiffrast's constants: the crossing window's slack (1/16 pixel) and the gradient's regulariser
WINDOW_SLACK = 0.0625
GRAD_EPS = 1e-3


def antialias_topology(tri: torch.Tensor) -> torch.Tensor:
    """``[T, 3]`` int64: for edge k of triangle t (from vertex ``tri[t, (k+1) % 3]`` to ``tri[t,
    (k+2) % 3]``), the vertex opposite that edge in the neighbouring triangle, or -1.

    Rules (nvdiffrast's edge hash, made deterministic): triangles with a negative index or a
    repeated vertex are left out (their entries are -1, and they are nobody's neighbour). For each
    undirected edge the opposite vertices of the triangles that share it are listed in order of
    triangle index, and the first two distinct ones kept (``s0``, ``s1``). A triangle whose own
    opposite vertex is ``s0`` gets ``s1`` (-1 if there is none: a boundary edge), one whose
    opposite vertex is ``s1`` gets ``s0``, any other gets -1 (a third triangle on a non-manifold
    edge counts the edge as a boundary).

    Args:
        tri: [T, 3] integer vertex indices.

    Returns:
        [T, 3] int64 on tri's device.

    Example:
        >>> antialias_topology(torch.tensor([[0, 1, 2], [2, 1, 3]]))
        tensor([[ 3, -1, -1],
                [-1, -1,  0]])
    """
    tri = tri.long()
    T = tri.shape[0]
    dev = tri.device
    if T == 0:
        return torch.empty(0, 3, dtype=torch.int64, device=dev)
    ok = (tri >= 0).all(1) & (tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 2] != tri[:, 0])
    a, b = tri[:, [1, 2, 0]].reshape(-1), tri[:, [2, 0, 1]].reshape(-1)  # edge k of t at entry 3 t + k
    opp = tri.reshape(-1)
    valid = ok.repeat_interleave(3)
    E = 3 * T
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    n = int(tri.max()) + 1
    if n <= 1 << 31:  # one int64 key per edge: a 1D unique is much faster than unique(dim=0)
        key = torch.where(valid, lo * n + hi, -1)
        _, group = torch.unique(key, return_inverse=True)
    else:
        _, group = torch.unique(torch.stack([lo, hi], 1), dim=0, return_inverse=True)
    G = int(group.max()) + 1
    entry = torch.arange(E, device=dev)
    none = torch.full((G,), E, dtype=torch.int64, device=dev)
    first = none.scatter_reduce(0, group, torch.where(valid, entry, E), "amin")
    s0 = torch.where(first < E, opp[first.clamp(max=E - 1)], -1)
    other = valid & (opp != s0[group])
    second = none.scatter_reduce(0, group, torch.where(other, entry, E), "amin")
    s1 = torch.where(second < E, opp[second.clamp(max=E - 1)], -1)
    g0, g1 = s0[group], s1[group]
    out = torch.where(opp == g0, g1, torch.where(opp == g1, g0, -1))
    return torch.where(valid, out, -1).reshape(T, 3)


def _signbit(x: torch.Tensor) -> torch.Tensor:
    return torch.signbit(x)


def _pairs(B: int, H: int, W: int, device):
    """(p0, p1, d, py, px) of every neighbour pair: flat pixel indices into [B * H * W], the
    direction (0 right, 1 down) and p0's row and column. Right pairs first, then down pairs,
    each in row-major order."""
    out = []
    for d, (h, w) in enumerate(((H, W - 1), (H - 1, W))):
        if B * max(h, 0) * max(w, 0) == 0:
            continue
        b, y, x = torch.meshgrid(torch.arange(B, device=device), torch.arange(h, device=device),
                                 torch.arange(w, device=device), indexing="ij")
        b, y, x = b.reshape(-1), y.reshape(-1), x.reshape(-1)
        p0 = (b * H + y) * W + x
        p1 = p0 + (1 if d == 0 else W)
        out.append((p0, p1, torch.full_like(p0, d), y, x, b))
    if not out:
        e = torch.empty(0, dtype=torch.int64, device=device)
        return e, e, e, e, e, e
    return tuple(torch.cat(parts) for parts in zip(*out))


def antialias_fwd(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
                  topology: torch.Tensor, pos_grad_eps: float = GRAD_EPS) -> torch.Tensor:
    """``antialias`` with the kernels' arguments: color [B, H, W, C], rast [B, H, W, 4], pos
    [Bp, V, 4] (Bp = 1 or B), tri [T, 3] int64, topology [T, 3] int64, floats of one dtype, and the
    position gradient's regulariser -> [B, H, W, C]."""
    B, H, W, C = color.shape
    V, T = pos.shape[1], tri.shape[0]
    dtype, dev = color.dtype, color.device
    flat = color.reshape(B * H * W, C)
    p0, p1, d, py, px, b = _pairs(B, H, W, dev)
    if p0.numel() == 0 or T == 0 or V == 0:
        return color.clone()

    # 1-2. the discontinuities and their triangle
    rr = rast.detach().reshape(-1, 4)
    ids = torch.round(rr[:, 3])
    id0, id1 = ids[p0], ids[p1]
    ok = (id0 != id1) & (id0 >= 0) & (id0 <= T) & (id1 >= 0) & (id1 <= T)
    sel = torch.nonzero(ok).squeeze(1)
    p0, p1, d, py, px, b = p0[sel], p1[sel], d[sel], py[sel], px[sel], b[sel]
    t0, t1 = id0[sel].long() - 1, id1[sel].long() - 1
    z0, z1 = rr[p0, 2], rr[p1, 2]
    use1 = (t0 < 0) | ((t1 >= 0) & ~(z0 < z1))
    t = torch.where(use1, t1, t0)
    vi = tri[t]  # [P, 3]
    ok = ((vi >= 0) & (vi < V)).all(1)
    sel = torch.nonzero(ok).squeeze(1)
    p0, p1, d, py, px, b, use1, t, vi = (x[sel] for x in (p0, p1, d, py, px, b, use1, t, vi))
    if p0.numel() == 0:
        return color.clone()
    opp = topology[t]
    opp = torch.where((opp >= 0) & (opp < V), opp, vi)
    ds = torch.where(use1, -1.0, 1.0).to(dtype)
    down = d == 1
    rx = px + torch.where(use1 & ~down, 1, 0)
    ry = py + torch.where(use1 & down, 1, 0)

    # 3. pixel-space positions relative to the reference pixel's centre
    bp = b if pos.shape[0] == B else torch.zeros_like(b)
    xh = torch.full((), W / 2, dtype=dtype, device=dev)
    yh = torch.full((), H / 2, dtype=dtype, device=dev)
    fx = (rx.to(dtype) + 0.5) - xh
    fy = (ry.to(dtype) + 0.5) - yh

    def project(p):  # p [P, 3, 4] -> X, Y [P, 3]
        iw = torch.ones_like(p[..., 3]) / p[..., 3]
        return (p[..., 0] * iw) * xh - fx[:, None], (p[..., 1] * iw) * yh - fy[:, None]

    X, Y = project(pos[bp[:, None], vi])  # differentiable
    Xd, Yd = X.detach(), Y.detach()
    OX, OY = project(pos.detach()[bp[:, None], opp])

    # 4. silhouette edges
    x0, x1, x2 = Xd.unbind(1)
    y0, y1, y2 = Yd.unbind(1)
    ox0, ox1, ox2 = OX.unbind(1)
    oy0, oy1, oy2 = OY.unbind(1)
    bb = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    a = torch.stack([(x1 - ox0) * (y2 - oy0) - (x2 - ox0) * (y1 - oy0),
                     (x2 - ox1) * (y0 - oy1) - (x0 - ox1) * (y2 - oy1),
                     (x0 - ox2) * (y1 - oy2) - (x1 - ox2) * (y0 - oy2)], 1)
    sil = _signbit(a) == _signbit(bb)[:, None]

    # 5. the crossing edge, in the frame where the pair lies along the first axis
    u = torch.where(down[:, None], Y, X)  # along the pair (differentiable)
    v = torch.where(down[:, None], X, Y)  # across it
    ud, vd = u.detach(), v.detach()
    s_idx, e_idx = [1, 2, 0], [2, 0, 1]
    us, ue, vs, ve = ud[:, s_idx], ud[:, e_idx], vd[:, s_idx], vd[:, e_idx]
    du, dv = ue - us, ve - vs
    n = ds[:, None] * (us * dv - vs * du)
    crosses = _signbit(vs) != _signbit(ve)

    def beats(i, j):
        r = (n[:, i] * dv[:, j] > n[:, j] * dv[:, i]) == (_signbit(dv[:, i]) == _signbit(dv[:, j]))
        return torch.where(crosses[:, i] & crosses[:, j], r, crosses[:, i])

    di = torch.where(beats(2, 0) & beats(2, 1), 2, torch.where(beats(1, 0), 1, 0))

    # 6. the blend
    pick = lambda z: z.gather(1, di[:, None]).squeeze(1)  # noqa: E731
    n_e, du_e, dv_e = pick(n), pick(du), pick(dv)
    dc = n_e / dv_e
    blend = (pick(crosses) & pick(sil) & (dv_e.abs() >= du_e.abs()) & (dc > -WINDOW_SLACK)
             & (dc < 1 + WINDOW_SLACK))
    alpha = ds * (0.5 - dc.clamp(0, 1))

    # 7. the position gradient: a term of value zero whose gradient is that of -q / (dy + eps)
    live = blend & (alpha.abs() < 0.5)
    k_s, k_e = torch.tensor(s_idx, device=dev)[di], torch.tensor(e_idx, device=dev)[di]
    gs = lambda z, k: z.gather(1, k[:, None]).squeeze(1)  # noqa: E731
    xs, xe, ys, ye = gs(u, k_s), gs(u, k_e), gs(v, k_s), gs(v, k_e)
    dy = ye - ys
    q = xs * dy - ys * (xe - xs)
    eps = torch.full_like(dy, pos_grad_eps).detach()
    eps = torch.where(_signbit(dy.detach()), -eps, eps)
    carrier = torch.where(live, -q / (dy + eps), torch.zeros((), dtype=dtype, device=dev))
    alpha = alpha + (carrier - carrier.detach())

    sel = torch.nonzero(blend).squeeze(1)
    p0, p1, alpha = p0[sel], p1[sel], alpha[sel]
    target = torch.where(alpha.detach() > 0, p0, p1)
    delta = alpha[:, None] * (flat[p1] - flat[p0])
    return flat.index_add(0, target, delta).reshape(B, H, W, C)


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology: torch.Tensor | None = None, pos_grad_eps: float = GRAD_EPS) -> torch.Tensor:
    """Antialiases silhouette edges (module docstring), plain PyTorch, differentiable w.r.t. color
    and pos.

    Args:
        color: [B, H, W, C] image to antialias.
        rast: [B, H, W, 4] from ``rasterize(pos, tri, (H, W))``.
        pos: [B, V, 4] or [V, 4] (the same for every image) clip-space positions.
        tri: [T, 3] integer vertex indices.
        topology: [T, 3] from ``antialias_topology(tri)``, or None to compute it.
        pos_grad_eps: the position gradient's regulariser (rule 7): nvdiffrast's 1e-3 pixel, or 0
            for the exact derivative of the forward.

    Returns:
        [B, H, W, C] in the promoted dtype of color, rast and pos.

    Example:
        >>> from pyengine.reference.rasterize import rasterize
        >>> pos = torch.tensor([[-0.9, -0.9, 0.0, 1.0], [0.9, -0.6, 0.0, 1.0], [-0.3, 0.8, 0.0, 1.0]])
        >>> tri = torch.tensor([[0, 1, 2]])
        >>> rast = rasterize(pos, tri, (8, 8))
        >>> out = antialias((rast[..., 3:] > 0).float(), rast, pos, tri)
        >>> bool(((out > 0) & (out < 1)).any())  # blended pixels along the silhouette
        True
    """
    if pos.dim() == 2:
        pos = pos[None]
    dtype = torch.promote_types(torch.promote_types(color.dtype, rast.dtype), pos.dtype)
    if topology is None:
        topology = antialias_topology(tri)
    return antialias_fwd(color.to(dtype), rast.to(dtype), pos.to(dtype), tri.long(), topology.long(), pos_grad_eps)
