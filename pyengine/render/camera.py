"""Pinhole cameras and ray generation, shared by the NeRF renderer and ShapeWorld.

Conventions (the same as NeRF and nerfstudio):

- **Camera frame** (OpenGL): the camera looks down its -z axis, +x points right in the image and
  +y points up. ``c2w [B, 3, 4]`` maps camera coordinates to world coordinates: its columns are
  the camera's right, up and backward axes and its position, all in world coordinates.
- **World frame** (used by ``orbit_cameras`` and ``look_at``'s default): +z is up.
- **Pixels**: images are ``[B, H, W, ...]`` tensors and a pixel is addressed by ``(i, j)`` =
  (row, column), row 0 at the top. The ray of pixel ``(i, j)`` passes through the image point
  ``(x, y) = (j + 0.5, i + 0.5)``, the pixel's centre; fractional ``i, j`` address points inside
  a pixel (for jittered sampling). The principal point ``(cx, cy)`` is in the same image units,
  so a centred camera has ``cx = W / 2, cy = H / 2``.
- **Rays**: ``rays_d`` are unit vectors, so a distance ``t`` along a ray is a Euclidean distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Cameras",
    "cameras_from_spherical",
    "clip_matrices",
    "generate_rays",
    "look_at",
    "orbit_cameras",
    "orbit_params",
    "project_clip",
    "project_points",
    "random_orbit_cameras",
    "rays_for_pixels",
]


def _as_batch(value, n: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """A scalar or [n] value -> [n] tensor with ``like``'s dtype and device."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.expand(n).clone()
    if t.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or a [{n}] tensor, got shape {tuple(t.shape)}")
    return t


@dataclass(eq=False)  # tensors have no single truth value; compare fields explicitly
class Cameras:
    """A batch of ``B`` pinhole cameras that share one image size.

    Args:
        c2w: [B, 3, 4] camera-to-world matrices (OpenGL camera frame: looks down -z, +y up,
            +x right). A [B, 4, 4] matrix is accepted and its last row dropped.
        fx, fy: [B] focal lengths in pixels (a scalar is broadcast to the batch).
        cx, cy: [B] principal point in pixels, from the image's top-left corner (``W / 2, H / 2``
            for a centred camera; a scalar is broadcast).
        width, height: image size in pixels.

    Example:
        >>> cams = orbit_cameras(8, radius=4.0, width=64, height=64)
        >>> len(cams), cams[0].c2w.shape, cams[torch.tensor([1, 3])].fx.shape
        (8, torch.Size([1, 3, 4]), torch.Size([2]))
    """

    c2w: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: int
    height: int

    def __post_init__(self):
        c2w = torch.as_tensor(self.c2w)
        if not c2w.is_floating_point():
            c2w = c2w.float()
        if c2w.ndim != 3 or c2w.shape[1:] not in ((3, 4), (4, 4)):
            raise ValueError(f"Cameras: c2w must be [B, 3, 4] or [B, 4, 4], got {tuple(c2w.shape)}")
        self.c2w = c2w[:, :3, :]
        n = c2w.shape[0]
        for name in ("fx", "fy", "cx", "cy"):
            setattr(self, name, _as_batch(getattr(self, name), n, self.c2w, f"Cameras.{name}"))
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Cameras: width and height must be positive, got {self.width}x{self.height}")

    @classmethod
    def from_fov(cls, c2w: torch.Tensor, fov_deg, width: int, height: int) -> Cameras:
        """Centred cameras with square pixels; ``fov_deg`` (scalar or [B]) is the vertical field of view."""
        c2w = torch.as_tensor(c2w)
        if not c2w.is_floating_point():
            c2w = c2w.float()
        fov = _as_batch(fov_deg, c2w.shape[0], c2w, "fov_deg")
        f = 0.5 * height / torch.tan(torch.deg2rad(fov) * 0.5)
        return cls(c2w, f, f.clone(), width / 2.0, height / 2.0, width, height)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, idx) -> Cameras:
        """``cams[i]`` keeps the batch dimension (a batch of one); slices, index and bool tensors work."""
        if isinstance(idx, torch.Tensor) and idx.ndim == 0 and not idx.is_floating_point():
            idx = int(idx)
        if hasattr(idx, "__index__") and not isinstance(idx, torch.Tensor):
            k = idx.__index__()
            if not -len(self) <= k < len(self):
                raise IndexError(f"Cameras: index {k} out of range for a batch of {len(self)}")
            k %= len(self)
            idx = slice(k, k + 1)
        elif isinstance(idx, torch.Tensor):
            idx = idx.to(self.c2w.device)
        return Cameras(self.c2w[idx], self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx],
                       self.width, self.height)

    def to(self, device=None, dtype=None) -> Cameras:
        """Move (and optionally cast) every tensor."""
        return Cameras(*(t.to(device=device, dtype=dtype) for t in (self.c2w, self.fx, self.fy, self.cx, self.cy)),
                       self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def dtype(self) -> torch.dtype:
        return self.c2w.dtype

    @property
    def origins(self) -> torch.Tensor:
        """[B, 3] camera centres in world coordinates."""
        return self.c2w[:, :, 3]

    @property
    def fov_y_deg(self) -> torch.Tensor:
        """[B] vertical field of view in degrees."""
        return torch.rad2deg(2 * torch.atan(0.5 * self.height / self.fy))

    @staticmethod
    def cat(cams: list[Cameras]) -> Cameras:
        """Concatenate batches of cameras with the same image size."""
        sizes = {(c.width, c.height) for c in cams}
        if len(sizes) != 1:
            raise ValueError(f"Cameras.cat: all cameras must share one image size, got {sorted(sizes)}")
        return Cameras(*(torch.cat([getattr(c, k) for c in cams]) for k in ("c2w", "fx", "fy", "cx", "cy")),
                       cams[0].width, cams[0].height)


def _rays(c2w, fx, fy, cx, cy, i, j):
    """Rays through image points (j + 0.5, i + 0.5); all inputs broadcast together.

    c2w: [..., 3, 4]; fx, fy, cx, cy, i, j: [...] -> rays_o, rays_d: [..., 3].
    """
    x = (j + 0.5 - cx) / fx
    y = -(i + 0.5 - cy) / fy  # image rows grow downwards, camera +y is up
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
    d = (c2w[..., :3, :3] @ d_cam.unsqueeze(-1)).squeeze(-1)
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    o = c2w[..., :3, 3].expand_as(d)
    return o.contiguous(), d


def generate_rays(cams: Cameras, pixel_ij: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of every camera through a grid of pixels.

    Args:
        cams: B cameras.
        pixel_ij: optional pixel coordinates (row i, column j), [h, w, 2] shared by all cameras or
            [B, h, w, 2] per camera; fractional values address points inside a pixel. Default: the
            full [H, W] grid of integer pixels (rays through pixel centres).

    Returns:
        rays_o: [B, h, w, 3] ray origins (camera centres).
        rays_d: [B, h, w, 3] unit ray directions in world coordinates.

    Example:
        >>> cams = orbit_cameras(2, width=32, height=24)
        >>> o, d = generate_rays(cams)
        >>> d.shape, torch.allclose(d.norm(dim=-1), torch.ones(2, 24, 32))
        (torch.Size([2, 24, 32, 3]), True)
    """
    B = len(cams)
    if pixel_ij is None:
        i, j = torch.meshgrid(torch.arange(cams.height, device=cams.device, dtype=cams.dtype),
                              torch.arange(cams.width, device=cams.device, dtype=cams.dtype), indexing="ij")
        pixel_ij = torch.stack([i, j], dim=-1)
    pixel_ij = torch.as_tensor(pixel_ij, device=cams.device).to(cams.dtype)
    if pixel_ij.ndim == 3:
        pixel_ij = pixel_ij.unsqueeze(0).expand(B, -1, -1, -1)
    if pixel_ij.ndim != 4 or pixel_ij.shape[0] != B or pixel_ij.shape[-1] != 2:
        raise ValueError(f"generate_rays: pixel_ij must be [h, w, 2] or [{B}, h, w, 2], got {tuple(pixel_ij.shape)}")

    def per_cam(t):
        return t.view(B, 1, 1)

    return _rays(cams.c2w[:, None, None], per_cam(cams.fx), per_cam(cams.fy), per_cam(cams.cx), per_cam(cams.cy),
                 pixel_ij[..., 0], pixel_ij[..., 1])


def rays_for_pixels(cams: Cameras, cam_idx: torch.Tensor, i: torch.Tensor, j: torch.Tensor, *,
                    validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays for a set of sampled pixels (e.g. a random training batch drawn across views).

    Args:
        cams: B cameras.
        cam_idx: [N] int64 camera index of each ray, in [0, B).
        i, j: [N] pixel row and column (integers, or floats for points inside a pixel); the ray of
            pixel ``(i, j)`` is the one ``generate_rays`` returns at ``[cam_idx, i, j]``.
        validate: check that cam_idx lies in [0, B), which reads two values back from the device;
            pass False for indices drawn in range (a training loop).

    Returns:
        rays_o, rays_d: [N, 3], directions unit-norm.

    Example:
        >>> cams = orbit_cameras(4)
        >>> g = torch.Generator().manual_seed(0)
        >>> n = 1024
        >>> idx = torch.randint(0, 4, (n,), generator=g)
        >>> i, j = torch.randint(0, 64, (2, n), generator=g)
        >>> o, d = rays_for_pixels(cams, idx, i, j)
        >>> d.shape
        torch.Size([1024, 3])
    """
    cam_idx = torch.as_tensor(cam_idx, device=cams.device)
    if cam_idx.dtype not in (torch.int32, torch.int64) or cam_idx.ndim != 1:
        raise TypeError(f"rays_for_pixels: cam_idx must be a [N] integer tensor, got {cam_idx.dtype} "
                        f"{tuple(cam_idx.shape)}")
    i = torch.as_tensor(i, device=cams.device).to(cams.dtype)
    j = torch.as_tensor(j, device=cams.device).to(cams.dtype)
    if i.shape != cam_idx.shape or j.shape != cam_idx.shape:
        raise ValueError(f"rays_for_pixels: cam_idx, i, j must have one shape [N], got {tuple(cam_idx.shape)}, "
                         f"{tuple(i.shape)}, {tuple(j.shape)}")
    if validate and cam_idx.numel() and (int(cam_idx.min()) < 0 or int(cam_idx.max()) >= len(cams)):
        raise ValueError(f"rays_for_pixels: cam_idx must lie in [0, {len(cams)})")
    c = cam_idx.long()
    return _rays(cams.c2w[c], cams.fx[c], cams.fy[c], cams.cx[c], cams.cy[c], i, j)


def project_points(cams: Cameras, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into every camera; the inverse of ``rays_for_pixels``.

    Args:
        cams: B cameras.
        points: [N, 3] world points seen by every camera, or [B, N, 3] per camera.

    Returns:
        ij: [B, N, 2] fractional pixel coordinates (row i, column j) in the convention of
            ``rays_for_pixels`` (pixel (i, j) covers [i, i + 1) x [j, j + 1) shifted by -0.5, i.e.
            its centre has integer coordinates); a point in front of a camera is inside its image
            when ``-0.5 <= i < H - 0.5`` and ``-0.5 <= j < W - 0.5``.
        depth: [B, N] z-depth along the camera's viewing axis (positive in front of the camera).
    """
    points = torch.as_tensor(points, device=cams.device, dtype=cams.dtype)
    if points.ndim == 2:
        points = points.unsqueeze(0).expand(len(cams), -1, -1)
    if points.ndim != 3 or points.shape[0] != len(cams) or points.shape[-1] != 3:
        raise ValueError(f"project_points: points must be [N, 3] or [{len(cams)}, N, 3], got {tuple(points.shape)}")
    R, t = cams.c2w[:, :, :3], cams.c2w[:, :, 3]
    p = (points - t[:, None]) @ R  # world -> camera: R^T (p - t), rows as vectors
    z = -p[..., 2]
    j = cams.fx[:, None] * p[..., 0] / z + cams.cx[:, None] - 0.5
    i = -cams.fy[:, None] * p[..., 1] / z + cams.cy[:, None] - 0.5
    return torch.stack([i, j], dim=-1), z


def clip_matrices(cams: Cameras, near: float = 0.1, far: float = 100.0) -> torch.Tensor:
    """[B, 4, 4] world-to-clip matrices for the rasterizer (``pyengine.ops.rasterize``).

    A world point ``p`` maps to ``M @ (p, 1) = (x, y, z, w)`` with ``w`` its depth along the
    viewing axis, and ``(x / w, y / w)`` lands on the rasterizer's pixel grid so that rasterized
    row ``i``, column ``j`` is this camera's pixel ``(i, j)`` (the one whose ray ``generate_rays``
    returns): ``x / w = (2 j' + 1) / W - 1`` and ``y / w = (2 i' + 1) / H - 1`` for the point's
    fractional pixel ``(i', j')`` of ``project_points``. The rasterizer's row 0 is clip ``y = -1``,
    so rows come out top first, as every image here. ``z / w`` runs from -1 at ``near`` to 1 at
    ``far`` (OpenGL's depth), increasing with distance.
    """
    if not 0 < near < far:
        raise ValueError(f"clip_matrices: need 0 < near < far, got near={near}, far={far}")
    B, W, H = len(cams), cams.width, cams.height
    R, t = cams.c2w[:, :, :3], cams.c2w[:, :, 3]
    view = torch.zeros(B, 4, 4, dtype=cams.dtype, device=cams.device)
    view[:, :3, :3] = R.transpose(1, 2)
    view[:, :3, 3] = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    view[:, 3, 3] = 1
    # camera (OpenGL frame, looking down -z): depth w = -z_cam; pixel j' + 0.5 = cx + fx x / w and
    # i' + 0.5 = cy - fy y / w, so x_clip = (2 fx / W) x + (2 cx / W - 1) w and likewise for rows
    proj = torch.zeros(B, 4, 4, dtype=cams.dtype, device=cams.device)
    proj[:, 0, 0] = 2 * cams.fx / W
    proj[:, 0, 2] = -(2 * cams.cx / W - 1)
    proj[:, 1, 1] = -2 * cams.fy / H
    proj[:, 1, 2] = -(2 * cams.cy / H - 1)
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2 * far * near / (far - near)
    proj[:, 3, 2] = -1
    return proj @ view


def project_clip(cams: Cameras, points: torch.Tensor, near: float = 0.1, far: float = 100.0) -> torch.Tensor:
    """Clip-space positions ``[B, N, 4]`` of world points ``[N, 3]`` (or ``[B, N, 3]``) in every
    camera (see :func:`clip_matrices`); differentiable w.r.t. ``points``."""
    if points.ndim not in (2, 3) or points.shape[-1] != 3 or (points.ndim == 3 and points.shape[0] != len(cams)):
        raise ValueError(f"project_clip: points must be [N, 3] or [{len(cams)}, N, 3], got {tuple(points.shape)}")
    M = clip_matrices(cams, near, far).to(points.dtype)
    homo = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    return homo @ M.transpose(1, 2) if points.ndim == 3 else torch.einsum("nk,bjk->bnj", homo, M)


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Camera-to-world matrices of cameras at ``eye`` looking at ``target``.

    Args:
        eye: [B, 3] (or [3]) camera positions.
        target: [B, 3] or [3] points to look at (default the origin).
        up: [3] or [B, 3] world up direction (default +z). Where the viewing direction is
            parallel to ``up`` another axis (+y, then +x) is used, so the result is always a rotation.

    Returns:
        c2w: [B, 3, 4] with orthonormal columns (right, up, backward) and determinant +1; the
        camera's -z axis points from ``eye`` to ``target`` and its +y axis lies in the plane of
        the viewing direction and ``up``, on ``up``'s side.

    Example:
        >>> c2w = look_at(torch.tensor([[4.0, 0.0, 0.0]]))
        >>> c2w[0, :, 2].tolist()  # backward axis: from the target towards the eye
        [1.0, 0.0, 0.0]
    """
    eye = torch.as_tensor(eye)
    if not eye.is_floating_point():
        eye = eye.float()
    eye = eye.reshape(-1, 3)
    target = torch.zeros(3) if target is None else target
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device).reshape(-1, 3)
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).reshape(-1, 3)
    eye, target, up = torch.broadcast_tensors(eye, target, up)
    backward = eye - target
    bnorm = torch.linalg.vector_norm(backward, dim=-1, keepdim=True)
    if (bnorm == 0).any():
        raise ValueError("look_at: eye and target coincide")
    backward = backward / bnorm
    forward = -backward
    right = torch.linalg.cross(forward, up)
    for alt in ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)):
        degenerate = torch.linalg.vector_norm(right, dim=-1, keepdim=True) < 1e-6
        alt_up = torch.tensor(alt, dtype=eye.dtype, device=eye.device).expand_as(forward)
        right = torch.where(degenerate, torch.linalg.cross(forward, alt_up), right)
    right = right / torch.linalg.vector_norm(right, dim=-1, keepdim=True)
    true_up = torch.linalg.cross(right, forward)
    return torch.stack([right, true_up, backward, eye], dim=-1)


def cameras_from_spherical(radius, elevation_deg, azimuth_deg, fov_deg=40.0, width: int = 64, height: int = 64,
                           center=(0.0, 0.0, 0.0), device=None, dtype=torch.float32) -> Cameras:
    """Cameras on spheres around ``center`` looking at it, from spherical coordinates (world +z up).

    The camera sits at ``center + radius * (cos(el) cos(az), cos(el) sin(az), sin(el))``: azimuth 0
    is on the +x axis, azimuth 90 on +y (counter-clockwise seen from above), elevation 90 straight
    above. Each argument is a scalar or a [n] tensor (n the largest size given).

    Args:
        radius, elevation_deg, azimuth_deg: camera distance, elevation and azimuth in degrees.
        fov_deg: vertical field of view in degrees (square pixels, centred principal point).
        width, height: image size in pixels.
        center: [3] the point looked at.
    """
    vals = [torch.as_tensor(v, dtype=dtype, device=device) for v in (radius, elevation_deg, azimuth_deg, fov_deg)]
    n = max(v.numel() if v.ndim else 1 for v in vals)
    radius, el, az, fov = (_as_batch(v, n, vals[0], name)
                           for v, name in zip(vals, ("radius", "elevation_deg", "azimuth_deg", "fov_deg")))
    el, az = torch.deg2rad(el), torch.deg2rad(az)
    center = torch.as_tensor(center, dtype=dtype, device=device).reshape(3)
    offset = torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1)
    eye = center + radius[:, None] * offset
    return Cameras.from_fov(look_at(eye, center), fov, width, height)


def orbit_cameras(n: int, radius: float = 4.0, elevation_deg=20.0, fov_deg: float = 40.0, width: int = 64,
                  height: int = 64, center=(0.0, 0.0, 0.0), start_azimuth_deg: float = 0.0, device=None,
                  dtype=torch.float32) -> Cameras:
    """``n`` cameras on a circle around ``center`` (a turntable), at evenly spaced azimuths.

    Azimuth ``k`` is ``start_azimuth_deg + 360 k / n`` (see ``cameras_from_spherical`` for the
    angles); the world is +z up and every camera's image +y points towards +z.

    Args:
        n: number of cameras.
        radius: distance from ``center``.
        elevation_deg: a float, or a [n] tensor for one elevation per camera.
        fov_deg: vertical field of view in degrees.
        width, height: image size in pixels.
        center: [3] the point every camera looks at (it projects to the image centre).
        start_azimuth_deg: azimuth of the first camera.

    Example:
        >>> cams = orbit_cameras(4, radius=4.0, elevation_deg=30.0)
        >>> cams.origins.norm(dim=-1)
        tensor([4., 4., 4., 4.])
    """
    az = start_azimuth_deg + 360.0 * torch.arange(n, dtype=torch.float64) / n
    return cameras_from_spherical(radius, elevation_deg, az.to(dtype), fov_deg, width, height, center, device, dtype)


def _uniform(n, lo_hi, generator, dtype):
    lo, hi = (float(lo_hi), float(lo_hi)) if isinstance(lo_hi, (int, float)) else map(float, lo_hi)
    if hi < lo:
        raise ValueError(f"range ({lo}, {hi}) is empty")
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64).to(dtype)


def random_orbit_cameras(n: int, generator: torch.Generator | None = None, radius_range=(3.5, 4.5),
                         elevation_range_deg=(0.0, 40.0), azimuth_range_deg=(0.0, 360.0), fov_deg=40.0,
                         width: int = 64, height: int = 64, center=(0.0, 0.0, 0.0), device=None,
                         dtype=torch.float32) -> Cameras:
    """``n`` random cameras around ``center`` looking at it, for training views and SDS.

    Radius, elevation, azimuth (and field of view when ``fov_deg`` is a range) are drawn uniformly
    and independently from their ranges (elevation uniform in angle, as in DreamFusion), using
    ``generator`` on the CPU so the result is the same on every device. A range may be a single
    number to fix that value. Angles follow ``cameras_from_spherical``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> cams = random_orbit_cameras(16, g, radius_range=(3.0, 4.0), elevation_range_deg=(-10, 60))
        >>> len(cams)
        16
    """
    radius = _uniform(n, radius_range, generator, dtype)
    el = _uniform(n, elevation_range_deg, generator, dtype)
    az = _uniform(n, azimuth_range_deg, generator, dtype)
    fov = _uniform(n, fov_deg, generator, dtype)
    return cameras_from_spherical(radius, el, az, fov, width, height, center, device, dtype)


def orbit_params(cams: Cameras, center=(0.0, 0.0, 0.0)) -> dict[str, torch.Tensor]:
    """Spherical coordinates of each camera about ``center``, inverse of ``cameras_from_spherical``.

    Returns a dict of [B] tensors: ``radius``, ``elevation_deg`` in [-90, 90] and ``azimuth_deg``
    in [0, 360) (e.g. for view-dependent prompts: front / side / back).
    """
    center = torch.as_tensor(center, dtype=cams.dtype, device=cams.device).reshape(3)
    v = cams.origins - center
    r = torch.linalg.vector_norm(v, dim=-1)
    el = torch.rad2deg(torch.asin((v[:, 2] / r.clamp_min(1e-12)).clamp(-1, 1)))
    az = torch.rad2deg(torch.atan2(v[:, 1], v[:, 0])) % 360.0
    return {"radius": r, "elevation_deg": el, "azimuth_deg": az}

