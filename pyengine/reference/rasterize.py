"""Pure-PyTorch triangle rasterization and attribute interpolation, the specification of
``rasterize`` and ``interpolate`` (nvdiffrast's ``rasterize`` / ``interpolate`` semantics, without
OpenGL).

Image and pixel centres. ``rast`` is ``[B, H, W, 4]``; pixel (row ``py``, column ``px``) has its
centre at NDC ``X = (2 px + 1) / W - 1``, ``Y = (2 py + 1) / H - 1``: row 0 is ``y = -1`` (OpenGL's
convention, as nvdiffrast).

Coverage, per pixel centre ``(X, Y)`` and triangle ``t = (i0, i1, i2)`` with clip-space vertices
``(x_k, y_k, z_k, w_k)``::

    a_k = x_k - X w_k,   c_k = y_k - Y w_k                              (k = 0, 1, 2)
    b_0 = a_1 c_2 - a_2 c_1,  b_1 = a_2 c_0 - a_0 c_2,  b_2 = a_0 c_1 - a_1 c_0   (b = a x c)
    s = b_0 + b_1 + b_2,  u = b_0 / s,  v = b_1 / s
    d = b_0 w_0 + b_1 w_1 + b_2 w_2,  n = b_0 z_0 + b_1 z_1 + b_2 z_2,  z/w = n / d

``b / s`` are the perspective-correct barycentrics of the point of the triangle's plane that
projects onto the pixel centre. The triangle covers the pixel when ``s != 0``, ``b_k / s >= 0``
for k = 0, 1, 2 (either winding: no culling), the interpolated ``w = d / s > 0`` (in front of the
camera), ``-1 <= z/w <= 1`` (depth clipping), and at least one vertex has ``w_k > 0`` (a triangle
wholly at ``w <= 0`` covers nothing). Every quantity is computed in pos's dtype, one rounding per
operation, in the order written (sums left to right); the kernels do exactly the same, so they
agree with this file bit for bit (the one caveat, a near-degenerate triangle that rounding makes
cover a pixel centre beyond its screen box, is in csrc/include/pyengine/rasterize.h).

Visibility: among the covering triangles the smallest depth wins, depth being ``z/w`` rounded to
float32 (a float32 depth buffer, for float64 inputs too); equal depths go to the smallest triangle
id. The output at a covered pixel is ``(u, v, z/w, t + 1)`` of the winner, all zeros elsewhere.
An attribute interpolates as ``u a_0 + v a_1 + (1 - u - v) a_2``.

Gradients flow to pos through u, v and z/w of the winning triangle; coverage and the winner are
piecewise constant (silhouette gradients are ``antialias``'s job, not this op's). nvdiffrast's
image-space derivatives (``rast_db``, ``diff_attrs``) are not provided. Edges: a pixel centre on
an edge shared by two triangles is covered by both (``b_k = 0`` passes), the depth test decides;
there is no top-left fill rule, so edge pixels may differ from nvdiffrast's.

Method: the winner is found with no gradient, over chunks of triangles and all pixels at once
(memory ``O(B H W chunk)``, time ``O(B H W T)``); then u, v and z/w of the winner are recomputed
by the same function on the gathered vertices, which carries the gradient.
"""

from __future__ import annotations

import torch

__all__ = ["interpolate", "interpolate_fwd", "pixel_centres", "rasterize", "rasterize_fwd"]

# elements of one [B, H * W, chunk] block of the winner search
_CHUNK_ELEMENTS = 1 << 21


def pixel_centres(n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """[n] NDC coordinates of the pixel centres along an axis of n pixels: ``(2 i + 1) / n - 1``.

    The division is by a full tensor, not a Python scalar: on CUDA torch divides by a scalar as a
    multiplication by its reciprocal, which can round differently."""
    odd = (torch.arange(n, device=device, dtype=torch.int64) * 2 + 1).to(dtype)
    return odd / torch.full((n,), float(n), dtype=dtype, device=device) - 1


def _homogeneous(p0, p1, p2, X, Y):
    """(b_0, b_1, b_2, s, d, n) of the module docstring for vertices p_k [..., 4] and centres X, Y
    (broadcastable)."""
    a0, a1, a2 = p0[..., 0] - X * p0[..., 3], p1[..., 0] - X * p1[..., 3], p2[..., 0] - X * p2[..., 3]
    c0, c1, c2 = p0[..., 1] - Y * p0[..., 3], p1[..., 1] - Y * p1[..., 3], p2[..., 1] - Y * p2[..., 3]
    b0 = a1 * c2 - a2 * c1
    b1 = a2 * c0 - a0 * c2
    b2 = a0 * c1 - a1 * c0
    s = b0 + b1 + b2
    d = b0 * p0[..., 3] + b1 * p1[..., 3] + b2 * p2[..., 3]
    n = b0 * p0[..., 2] + b1 * p1[..., 2] + b2 * p2[..., 2]
    return b0, b1, b2, s, d, n


def _covered(p0, p1, p2, X, Y):
    """(covered, float32 depth) of vertices p_k [..., 4] at centres X, Y (no gradient needed)."""
    b0, b1, b2, s, d, n = _homogeneous(p0, p1, p2, X, Y)
    zw = n / d
    front = (p0[..., 3] > 0) | (p1[..., 3] > 0) | (p2[..., 3] > 0)
    cov = ((s != 0) & (b0 / s >= 0) & (b1 / s >= 0) & (b2 / s >= 0) & (d / s > 0) & (zw >= -1) & (zw <= 1)
           & front)
    return cov, zw.to(torch.float32)


def _winner(pos: torch.Tensor, tri: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """[B, P] int64 id of the visible triangle at each pixel, -1 where none covers it."""
    B, P, T = pos.shape[0], X.shape[0], tri.shape[0]
    best_z = torch.full((B, P), float("inf"), dtype=torch.float32, device=pos.device)
    best_t = torch.full((B, P), -1, dtype=torch.int64, device=pos.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, B * P))
    Xc, Yc = X[None, :, None], Y[None, :, None]
    for t0 in range(0, T, chunk):
        idx = tri[t0:t0 + chunk]
        p = [pos[:, idx[:, k]][:, None] for k in range(3)]  # [B, 1, Tc, 4]
        cov, z = _covered(*p, Xc, Yc)  # [B, P, Tc]
        z = torch.where(cov, z, float("inf"))
        zmin = z.min(-1).values
        # smallest depth, then smallest id: the first triangle of the chunk at the minimum
        at_min = cov & (z == zmin[..., None])
        first = at_min.to(torch.int32).argmax(-1)  # the first maximum
        better = at_min.any(-1) & (zmin < best_z)  # strict: an earlier chunk keeps a tie
        best_z = torch.where(better, zmin, best_z)
        best_t = torch.where(better, first + t0, best_t)
    return best_t


def rasterize_fwd(pos: torch.Tensor, tri: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``rasterize`` with the kernels' arguments: pos [B, V, 4], tri [T, 3] int64 -> [B, H, W, 4]."""
    B, dtype, dev = pos.shape[0], pos.dtype, pos.device
    H, W = height, width
    X = pixel_centres(W, dtype, dev).repeat(H)  # [P], row-major pixels
    Y = pixel_centres(H, dtype, dev).repeat_interleave(W)
    if B * H * W == 0 or tri.shape[0] == 0:
        return pos.new_zeros(B, H, W, 4)
    tri = tri.long()
    best = _winner(pos.detach(), tri, X, Y)  # [B, P]
    hit = best >= 0
    vid = tri[best.clamp(min=0)]  # [B, P, 3]
    bidx = torch.arange(B, device=dev)[:, None]
    p0, p1, p2 = (pos[bidx, vid[..., k]] for k in range(3))  # [B, P, 4]
    b0, b1, b2, s, d, n = _homogeneous(p0, p1, p2, X[None], Y[None])
    # the same values as the winner search; safe denominators where nothing won (no 0 / 0 in backward)
    one = torch.ones((), dtype=dtype, device=dev)
    s, d = torch.where(hit, s, one), torch.where(hit, d, one)
    out = torch.stack([b0 / s, b1 / s, n / d, (best + 1).to(dtype)], -1)
    return torch.where(hit[..., None], out, torch.zeros((), dtype=dtype, device=dev)).reshape(B, H, W, 4)


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution) -> torch.Tensor:
    """Rasterizes triangles into ``(u, v, z/w, triangle_id + 1)`` per pixel (module docstring).

    Args:
        pos: [B, V, 4] or [V, 4] clip-space vertex positions (x, y, z, w), float32 / float64.
        tri: [T, 3] integer vertex indices into V.
        resolution: (H, W).

    Returns:
        [B, H, W, 4] in pos's dtype ([1, H, W, 4] for a [V, 4] pos); zeros where nothing covers.

    Example:
        >>> pos = torch.tensor([[-1.0, -1, 0, 1], [1, -1, 0, 1], [-1, 1, 0, 1]])
        >>> rast = rasterize(pos, torch.tensor([[0, 1, 2]]), (2, 2))
        >>> rast[0, :, :, 3]  # the lower-left half, row 0 at y = -1
        tensor([[1., 1.],
                [1., 0.]])
    """
    if pos.dim() == 2:
        pos = pos[None]
    H, W = resolution
    return rasterize_fwd(pos, tri, int(H), int(W))


def interpolate_fwd(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """``interpolate`` with the kernels' arguments: attr [Ba, V, C] (Ba = 1 broadcasts over B),
    rast [B, H, W, 4], tri [T, 3] -> [B, H, W, C]."""
    B, H, W, _ = rast.shape
    C, T = attr.shape[2], tri.shape[0]
    ids = torch.round(rast[..., 3].detach()).long()
    hit = (ids >= 1) & (ids <= T)
    if T == 0 or B * H * W == 0:
        return rast.new_zeros(B, H, W, C)
    vid = tri.long()[torch.where(hit, ids - 1, 0)]  # [B, H, W, 3]
    bidx = (torch.arange(B, device=rast.device) if attr.shape[0] == B else torch.zeros(B, dtype=torch.int64,
                                                                                      device=rast.device))
    a0, a1, a2 = (attr[bidx[:, None, None], vid[..., k]] for k in range(3))  # [B, H, W, C]
    u, v = rast[..., 0:1], rast[..., 1:2]
    out = u * a0 + v * a1 + (1 - u - v) * a2
    return torch.where(hit[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Interpolates vertex attributes over the rasterized triangles.

    ``out[b, y, x] = u attr[t_0] + v attr[t_1] + (1 - u - v) attr[t_2]`` where ``rast[b, y, x] =
    (u, v, _, t + 1)`` and ``tri[t] = (t_0, t_1, t_2)``; zero where the id channel (rounded to the
    nearest integer) is 0 or beyond T. Differentiable w.r.t. attr and rast's u and v.

    Args:
        attr: [B, V, C] or [V, C] (the same for every image) vertex attributes.
        rast: [B, H, W, 4], as ``rasterize`` returns it.
        tri: [T, 3] integer vertex indices.

    Returns:
        [B, H, W, C].

    Example:
        >>> pos = torch.tensor([[-1.0, -1, 0, 1], [1, -1, 0, 1], [-1, 1, 0, 1]])
        >>> tri = torch.tensor([[0, 1, 2]])
        >>> out = interpolate(torch.eye(3), rasterize(pos, tri, (2, 2)), tri)
        >>> out[0, 0, 0]  # u, v, 1 - u - v at the first pixel centre
        tensor([0.5000, 0.2500, 0.2500])
    """
    if attr.dim() == 2:
        attr = attr[None]
    return interpolate_fwd(attr, rast, tri)
