"""Rendering a triangle mesh with pyengine's rasterizer: positions, normals, a colour field, shading
and antialiased silhouettes, differentiable w.r.t. the vertices and the colour field.

This is what Magic3D's fine stage renders (``pyengine.engines.magic3d``) and what turns a mesh into
turntables and evaluation views. It is nvdiffrast's usual pipeline on pyengine's ops:
``rasterize`` (visibility, perspective-correct barycentrics), ``interpolate`` (world positions and
vertex normals per pixel), the colour field queried at the visible surface points, and
``antialias`` on the composited image so that silhouette pixels depend on the vertex positions
(without it coverage is piecewise constant and the outline gets no gradient). As in nvdiffrast, a
pixel pair is blended only where the triangle covering the nearer pixel owns the silhouette edge
between them, so the outline gets its gradient where triangles span a few pixels or more; at
about a pixel per triangle most outline pixels get none.

Shading follows the SDS engine (``pyengine.engines.sds``): ``albedo`` (flat colour), ``diffuse``
(albedo times ``ambient + (1 - ambient) max(0, n . l)``) or ``textureless`` (white albedo, diffuse
light), composited over a constant background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyengine.render.camera import Cameras, project_clip

__all__ = ["SHADINGS", "render_mesh", "vertex_normals"]

SHADINGS = ("albedo", "diffuse", "textureless")


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[V, 3] unit vertex normals: the area-weighted sum of the adjacent faces' normals (faces
    wound counter-clockwise seen from outside). A vertex of no face gets a zero normal."""
    v0, v1, v2 = (verts[faces[:, k]] for k in range(3))
    fn = torch.linalg.cross(v1 - v0, v2 - v0)  # length = twice the area: area weighting
    vn = torch.zeros_like(verts).index_add(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return F.normalize(vn, dim=-1, eps=1e-20)


def render_mesh(verts: torch.Tensor, faces: torch.Tensor, cams: Cameras, color_fn=None, *, shading: str = "diffuse",
                lights: torch.Tensor | None = None, ambient: float = 0.1, background=(1.0, 1.0, 1.0),
                antialias: bool = True, near: float = 0.1, far: float = 100.0, backend: str | None = None) -> dict:
    """Render a mesh from every camera.

    Args:
        verts: [V, 3] world positions (differentiable).
        faces: [F, 3] int vertex indices, counter-clockwise seen from outside.
        cams: B cameras (one image size).
        color_fn: [N, 3] world points -> [N, 3] albedo in [0, 1] (e.g. a texture field); None: grey.
        shading: ``albedo``, ``diffuse`` or ``textureless``.
        lights: [B, 3] unit directions towards the light (needed unless ``shading="albedo"``).
        ambient: the ambient share of diffuse shading.
        background: RGB of empty pixels.
        antialias: run ``antialias`` on the image and the opacity (silhouette gradients).
        near, far: clip planes (see ``pyengine.render.camera.clip_matrices``).
        backend: the ops' backend (None: automatic).

    Returns:
        dict with ``rgb`` [B, H, W, 3], ``opacity`` [B, H, W] (1 on the mesh, 0 off it, fractional
        on antialiased silhouettes), ``normal`` [B, H, W, 3] (unit world normals, 0 off the mesh),
        ``depth`` [B, H, W] (distance along the viewing axis, 0 off the mesh) and ``rast`` (the
        rasterizer's output).
    """
    from pyengine.ops.rasterize import interpolate, rasterize

    if shading not in SHADINGS:
        raise ValueError(f"render_mesh: shading must be one of {SHADINGS}, got {shading!r}")
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"render_mesh: verts must be [V, 3], got {tuple(verts.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"render_mesh: faces must be [F, 3], got {tuple(faces.shape)}")
    B, H, W = len(cams), cams.height, cams.width
    if shading != "albedo" and (lights is None or tuple(lights.shape) != (B, 3)):
        raise ValueError(f"render_mesh: {shading} shading needs lights [{B}, 3], got "
                         f"{None if lights is None else tuple(lights.shape)}")
    tri = faces.to(torch.int32)
    pos = project_clip(cams, verts, near, far).contiguous()
    rast = rasterize(pos, tri, (H, W), backend=backend)
    hit = rast[..., 3] > 0
    mask = hit[..., None].to(verts.dtype)
    attrs = torch.cat([verts, vertex_normals(verts, faces)], -1)  # world positions and normals
    surf = interpolate(attrs[None].expand(B, -1, -1).contiguous(), rast, tri, backend=backend)
    points, normal = surf[..., :3], F.normalize(surf[..., 3:6], dim=-1, eps=1e-12) * mask
    depth = interpolate(pos[..., 3:4].contiguous(), rast, tri, backend=backend)[..., 0]
    if shading == "textureless" or color_fn is None:
        albedo = torch.full_like(points, 1.0 if shading == "textureless" else 0.7)
    else:
        albedo = torch.zeros_like(points)
        if hit.any():
            albedo = albedo.index_put((hit,), color_fn(points[hit]).to(albedo.dtype))
    if shading == "albedo":
        fg = albedo
    else:
        lam = (normal * lights.to(normal)[:, None, None, :]).sum(-1, keepdim=True).clamp_min(0)
        fg = albedo * (ambient + (1 - ambient) * lam)
    bg = torch.tensor(background, dtype=fg.dtype, device=fg.device)
    rgb = fg * mask + bg * (1 - mask)
    opacity = mask
    if antialias:
        from pyengine.ops.antialias import antialias as aa

        both = aa(torch.cat([rgb, opacity], -1).contiguous(), rast, pos, tri, backend=backend)
        rgb, opacity = both[..., :3], both[..., 3:]
    return {"rgb": rgb, "opacity": opacity[..., 0], "normal": normal, "depth": depth * hit, "rast": rast}
