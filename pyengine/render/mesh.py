"""Meshes, turntables and image sheets: what the text-to-3D engines write for people to look at.

The 3D engines (``pyengine sds`` — DreamFusion and its SJC / VSD variants — and ``pyengine magic3d``)
optimise a NeRF field; when they finish they call:

- :func:`extract_mesh` on the field's density (``field.density``) over its aabb, with the field's
  albedo as ``color_fn``: marching cubes at a density level gives a vertex-coloured triangle mesh;
- :func:`write_mesh` to save it as OBJ (per-vertex colours, ``v x y z r g b``) and GLB (colours in
  the ``COLOR_0`` attribute), which MeshLab, Blender and glTF viewers open;
- :func:`write_turntable` on frames rendered around the object (``pyengine.render.orbit_cameras``
  and ``render_image``): GIF always, MP4 where imageio's ffmpeg plugin is installed;
- :func:`image_grid` to tile validation renders (views or prompts) into one sheet.

Marching cubes is scikit-image's (``skimage.measure.marching_cubes``), the GLB writer is trimesh's;
both are imported on first use, so importing this module costs nothing.

Example:
    >>> mesh = extract_mesh(field.density, aabb=[-1, -1, -1, 1, 1, 1], resolution=256, threshold=25.0,
    ...                     color_fn=lambda x: field(x)["albedo"], largest_component=True)
    >>> write_mesh(mesh, "runs/sds/mesh")  # ['runs/sds/mesh.obj', 'runs/sds/mesh.glb']
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

MESH_FORMATS = ("obj", "glb")
VIDEO_FORMATS = ("gif", "mp4")
DEFAULT_GREY = 179  # vertex colour without a color_fn: 0.7 grey, light enough to show shading


@dataclass
class Mesh:
    """A triangle mesh with per-vertex colours.

    Attributes:
        vertices: [V, 3] float32 world coordinates.
        faces: [F, 3] int64 vertex indices, counter-clockwise seen from outside (the right-hand
            normal ``(v1 - v0) x (v2 - v0)`` points out of the high-density region).
        vertex_colors: [V, 3] uint8 RGB.
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray

    def to_trimesh(self):
        """The same mesh as a ``trimesh.Trimesh`` (vertices kept as they are, not merged)."""
        import trimesh

        return trimesh.Trimesh(vertices=self.vertices, faces=self.faces, vertex_colors=self.vertex_colors,
                               process=False)


def _check_aabb(aabb) -> tuple[np.ndarray, np.ndarray]:
    try:
        box = np.asarray(aabb.detach().cpu() if isinstance(aabb, torch.Tensor) else aabb, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"aabb: expected 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax), got {aabb!r}") from e
    if box.size != 6:
        raise ValueError(f"aabb: expected 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax) or [2, 3], "
                         f"got shape {tuple(box.shape)}")
    lo, hi = box.reshape(2, 3)
    if not (np.isfinite(box).all() and (lo < hi).all()):
        raise ValueError(f"aabb: needs finite bounds with min < max on every axis, got min {lo.tolist()} "
                         f"max {hi.tolist()}")
    return lo, hi


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def _infer_device(fn) -> torch.device:
    """The device of the module behind ``fn`` (a module, or a bound method of one), else CPU."""
    owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        for t in owner.parameters():
            return t.device
        for t in owner.buffers():
            return t.device
    return torch.device("cpu")


def _evaluate(fn, points: torch.Tensor, width: int, name: str) -> torch.Tensor:
    """``fn(points [N, 3])`` as float32 [N] (width 0) or [N, width], checked."""
    n = points.shape[0]
    out = fn(points)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(np.asarray(out))
    expected = (n,) if width == 0 else (n, width)
    if out.numel() != math.prod(expected):
        raise ValueError(f"{name}: returned shape {tuple(out.shape)} for {n} points, expected {list(expected)}")
    return out.reshape(expected).float()


@torch.no_grad()
def _grid_density(density_fn, lo, hi, resolution: int, chunk: int, device) -> np.ndarray:
    """Density on the resolution^3 grid points spanning [lo, hi] inclusive.

    Returns [r, r, r] float32 with ``[i, j, k]`` the density at ``(x_i, y_j, z_k)``.
    """
    r = resolution
    lo_t = torch.tensor(lo, dtype=torch.float64, device=device)
    ext_t = torch.tensor(hi - lo, dtype=torch.float64, device=device)
    total = r ** 3
    out = np.empty(total, dtype=np.float32)
    for s in range(0, total, chunk):
        idx = torch.arange(s, min(s + chunk, total), device=device)
        ijk = torch.stack([idx // (r * r), (idx // r) % r, idx % r], -1)
        pts = (lo_t + ext_t * (ijk.double() / (r - 1))).float()  # exact at both ends of the box
        out[s:s + idx.shape[0]] = _evaluate(density_fn, pts, 0, "density_fn").cpu().numpy()
    if np.isnan(out).any():
        raise ValueError(f"density_fn: returned NaN at {int(np.isnan(out).sum())} of {total} grid points")
    # +-inf would make the edge interpolation 0 * inf; any finite stand-in far from the level does the same job
    return np.clip(out, -1e30, 1e30).reshape(r, r, r)


def _largest_component(vertices, faces, colors):
    """Keep the connected component (through shared vertices) with the most faces."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    V = vertices.shape[0]
    a = np.concatenate([faces[:, 0], faces[:, 1]])
    b = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(a.shape[0], dtype=np.int8), (a, b)), shape=(V, V))
    n, labels = connected_components(graph, directed=False)
    if n == 1:
        return vertices, faces, colors
    face_label = labels[faces[:, 0]]
    keep_label = np.bincount(face_label, minlength=n).argmax()
    keep_v = labels == keep_label
    remap = np.cumsum(keep_v) - 1
    return vertices[keep_v], remap[faces[face_label == keep_label]], colors[keep_v]


def extract_mesh(density_fn, aabb, resolution: int = 128, threshold: float = 25.0, chunk: int = 65536,
                 color_fn=None, device=None, largest_component: bool = False,
                 fallback: float | None = None) -> Mesh:
    """Marching cubes on the ``threshold`` level set of a density field inside an axis-aligned box.

    ``density_fn`` is sampled under ``torch.no_grad`` on the ``resolution^3`` grid of points
    spanning ``aabb`` inclusive (spacing ``(max - min) / (resolution - 1)`` per axis), ``chunk``
    points per call. The surface separates density above ``threshold`` (inside) from below; where
    the object reaches the box's faces the surface is cut open there.

    Args:
        density_fn: callable ``points [N, 3] float32 -> [N]`` (or [N, 1]) densities, e.g. ``field.density``.
        aabb: [6] ``(xmin, ymin, zmin, xmax, ymax, zmax)`` or [2, 3], list or tensor.
        resolution: grid points per axis, >= 2 (cells per axis: ``resolution - 1``).
        threshold: density level of the surface (NeRF densities: 10 to 50 are usual).
        chunk: points per ``density_fn`` / ``color_fn`` call.
        color_fn: optional callable ``points [N, 3] float32 -> [N, 3]`` RGB in [0, 1] (clipped),
            evaluated at the vertices; without it every vertex is grey.
        device: where the points are made; default: the device of the module behind ``density_fn``
            (a module or its bound method, e.g. ``field.density``), else CPU.
        largest_component: keep only the connected piece with the most faces (drops floaters).
        fallback: None: a density that stays below ``threshold`` everywhere is an error. A
            fraction in (0, 1): extract at ``fallback`` times the largest density found instead,
            with a warning that names the level (for fields whose density scale varies from run
            to run, as in score distillation).

    Returns:
        :class:`Mesh` with vertices [V, 3] float32 in world coordinates, faces [F, 3] int64 with
        outward (counter-clockwise) winding, vertex_colors [V, 3] uint8.

    Raises:
        ValueError: bad ``aabb``, ``resolution`` < 2, ``chunk`` < 1, a non-finite ``threshold``,
            NaN densities, or a density that never crosses ``threshold`` (the message gives the
            range found, to help choose a level).

    Example:
        >>> sphere = lambda x: 100.0 * (0.5 - x.norm(dim=-1)).clamp_min(-1.0)
        >>> mesh = extract_mesh(sphere, [-1, -1, -1, 1, 1, 1], resolution=64, threshold=0.0)
        >>> mesh.vertices.shape[1], mesh.faces.dtype
        (3, dtype('int64'))
    """
    from skimage.measure import marching_cubes

    lo, hi = _check_aabb(aabb)
    resolution = _check_count(resolution, "resolution", 2)
    chunk = _check_count(chunk, "chunk", 1)
    if not isinstance(threshold, (int, float, np.floating, np.integer)) or not math.isfinite(threshold):
        raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
    threshold = float(threshold)
    device = torch.device(device) if device is not None else _infer_device(density_fn)

    if fallback is not None and not (isinstance(fallback, (int, float)) and 0 < fallback < 1):
        raise ValueError(f"fallback: expected None or a fraction in (0, 1), got {fallback!r}")
    volume = _grid_density(density_fn, lo, hi, resolution, chunk, device)
    vmin, vmax = float(volume.min()), float(volume.max())
    if fallback is not None and vmin < vmax <= threshold and vmin < fallback * vmax:
        level = fallback * vmax
        warnings.warn(f"extract_mesh: the density stays below the threshold {threshold:g} (max {vmax:.6g}); "
                      f"extracting at {fallback:g} x max = {level:.6g} instead", RuntimeWarning, stacklevel=2)
        threshold = level
    if not vmin < threshold < vmax:
        raise ValueError(f"extract_mesh: the density never crosses the threshold {threshold:g} inside the aabb "
                         f"(density found: min {vmin:.6g}, max {vmax:.6g} on a {resolution}^3 grid); "
                         f"choose a threshold in that range")
    # "ascent": high values are inside, so faces wind counter-clockwise seen from the low side
    verts, faces, _, _ = marching_cubes(volume, level=threshold, gradient_direction="ascent")
    if faces.shape[0] == 0:
        raise ValueError(f"extract_mesh: the density never crosses the threshold {threshold:g} between grid points "
                         f"(density found: min {vmin:.6g}, max {vmax:.6g})")
    vertices = (lo + verts.astype(np.float64) * ((hi - lo) / (resolution - 1))).astype(np.float32)
    faces = faces.astype(np.int64)

    if color_fn is None:
        colors = np.full(vertices.shape, DEFAULT_GREY, dtype=np.uint8)
    else:
        pts = torch.from_numpy(vertices).to(device)
        with torch.no_grad():
            rgb = torch.cat([_evaluate(color_fn, pts[s:s + chunk], 3, "color_fn").cpu()
                             for s in range(0, pts.shape[0], chunk)])
        if torch.isnan(rgb).any():
            raise ValueError("color_fn: returned NaN colours")
        colors = (rgb.clamp(0.0, 1.0).numpy() * 255.0 + 0.5).astype(np.uint8)

    if largest_component:
        vertices, faces, colors = _largest_component(vertices, faces, colors)
    return Mesh(vertices=vertices, faces=faces, vertex_colors=colors)


def _colors01(mesh: Mesh) -> np.ndarray:
    c = np.asarray(mesh.vertex_colors)
    return c.astype(np.float64) / 255.0 if c.dtype == np.uint8 else np.clip(c.astype(np.float64), 0.0, 1.0)


def _colors_uint8(mesh: Mesh) -> np.ndarray:
    c = np.asarray(mesh.vertex_colors)
    return c if c.dtype == np.uint8 else (np.clip(c, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _check_mesh(mesh) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a pyengine.render.mesh.Mesh, got {type(mesh).__name__}")
    V = mesh.vertices.shape[0]
    if mesh.vertices.ndim != 2 or mesh.vertices.shape[1] != 3 or mesh.faces.ndim != 2 or mesh.faces.shape[1] != 3:
        raise ValueError(f"mesh: expected vertices [V, 3] and faces [F, 3], got {tuple(mesh.vertices.shape)} and "
                         f"{tuple(mesh.faces.shape)}")
    if mesh.vertex_colors.shape != (V, 3):
        raise ValueError(f"mesh: expected vertex_colors [{V}, 3], got {tuple(mesh.vertex_colors.shape)}")
    if mesh.faces.size and (mesh.faces.min() < 0 or mesh.faces.max() >= V):
        raise ValueError(f"mesh: face indices must lie in [0, {V})")


def _parent(path: str) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)


def write_obj(mesh: Mesh, path: str) -> str:
    """Write ``mesh`` as a Wavefront OBJ with per-vertex colours; returns ``path``.

    Vertex lines are ``v x y z r g b`` with colours in [0, 1] (the extension MeshLab, Blender and
    trimesh read); faces ``f a b c`` are 1-based. No MTL file: colours live on the vertices.
    """
    _check_mesh(mesh)
    _parent(path)
    table = np.hstack([np.asarray(mesh.vertices, dtype=np.float64), _colors01(mesh)])
    with open(path, "w") as f:
        f.write(f"# pyengine mesh: {mesh.vertices.shape[0]} vertices, {mesh.faces.shape[0]} faces\n")
        np.savetxt(f, table, fmt="v %.7g %.7g %.7g %.4f %.4f %.4f")
        np.savetxt(f, np.asarray(mesh.faces, dtype=np.int64) + 1, fmt="f %d %d %d")
    return path


def write_glb(mesh: Mesh, path: str) -> str:
    """Write ``mesh`` as binary glTF (GLB) with trimesh; vertex colours go to ``COLOR_0``. Returns ``path``."""
    _check_mesh(mesh)
    _parent(path)
    tm = Mesh(mesh.vertices, mesh.faces, _colors_uint8(mesh)).to_trimesh()
    with open(path, "wb") as f:
        f.write(tm.export(file_type="glb"))
    return path


def write_mesh(mesh: Mesh, stem: str, formats=MESH_FORMATS) -> list[str]:
    """Write ``<stem>.obj`` and/or ``<stem>.glb`` (``formats``); returns the paths written."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    bad = [f for f in formats if f not in MESH_FORMATS]
    if bad:
        raise ValueError(f"formats: unknown mesh format(s) {bad}; choose from {list(MESH_FORMATS)}")
    writers = {"obj": write_obj, "glb": write_glb}
    return [writers[f](mesh, f"{stem}.{f}") for f in MESH_FORMATS if f in formats]


def mp4_available() -> bool:
    """Whether imageio can write MP4 here (its ffmpeg plugin, ``imageio-ffmpeg``)."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def _check_frames(frames, name: str, dims: str) -> np.ndarray:
    """``frames`` as a uint8 array of shape ``dims`` (4 dimensions, the last 3, none empty)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"{name}: expected uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape) == 0:
        raise ValueError(f"{name}: expected {dims} uint8 with no empty dimension, got {tuple(frames.shape)}")
    return frames


def write_turntable(frames: np.ndarray, stem: str, fps: int = 12, formats=VIDEO_FORMATS) -> list[str]:
    """Write ``frames`` [T, H, W, 3] uint8 as ``<stem>.gif`` and/or ``<stem>.mp4``; returns the paths written.

    The GIF loops forever at ``fps``. The MP4 (H.264, yuv420p) is written only where imageio's
    ffmpeg plugin is importable (:func:`mp4_available`) and is skipped without error otherwise;
    odd frame sizes are padded to even by repeating the last row / column (yuv420p needs even sizes).

    Example:
        >>> write_turntable(frames, "runs/sds/turntable")  # ['runs/sds/turntable.gif', 'runs/sds/turntable.mp4']
    """
    import imageio.v3 as iio

    frames = _check_frames(frames, "frames", "[T, H, W, 3]")
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    bad = [f for f in formats if f not in VIDEO_FORMATS]
    if bad:
        raise ValueError(f"formats: unknown video format(s) {bad}; choose from {list(VIDEO_FORMATS)}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    _parent(stem)
    written = []
    if "gif" in formats:
        iio.imwrite(stem + ".gif", frames, duration=1000.0 / fps, loop=0)
        written.append(stem + ".gif")
    if "mp4" in formats and mp4_available():
        _, H, W, _ = frames.shape
        even = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
        # imageio's ffmpeg writer: libx264, yuv420p; macro_block_size=1 keeps the size (it would pad to 16)
        iio.imwrite(stem + ".mp4", even, fps=fps, codec="libx264", macro_block_size=1)
        written.append(stem + ".mp4")
    return written


def image_grid(images: np.ndarray, cols: int, gap: int = 2) -> np.ndarray:
    """Tile ``images`` [N, H, W, 3] uint8 row by row into a sheet with ``cols`` columns and grey gaps.

    Returns:
        [rows * (H + gap) - gap, cols * (W + gap) - gap, 3] uint8 with ``rows = ceil(N / cols)``;
        gaps and unused cells are grey (128).

    Example:
        >>> image_grid(np.zeros((5, 64, 64, 3), np.uint8), cols=3).shape
        (130, 196, 3)
    """
    images = _check_frames(images, "images", "[N, H, W, 3]")
    cols = _check_count(cols, "cols", 1)
    gap = _check_count(gap, "gap", 0)
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 128, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = images[k]
    return out
