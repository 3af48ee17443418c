"""A small CPU point-splatting renderer for point-cloud previews and turntables.

Orthographic view of the cloud turned by an azimuth about +z and tilted by an elevation; each
point is a disc of ``radius_px`` pixels, the nearest point wins per pixel (a z-buffer done by
sorting), and points are shaded darker with depth. It shows the shape, nothing more.
"""

from __future__ import annotations

import math

import numpy as np


def splat(points, azimuth_deg: float = 0.0, elevation_deg: float = 20.0, size: int = 128, extent: float = 1.2,
          radius_px: float = 1.5, color=(0.16, 0.34, 0.88), background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Render ``points`` [N, 3] to a [size, size, 3] uint8 image.

    Args:
        points: [N, 3] (numpy or torch), world +z up.
        azimuth_deg, elevation_deg: view direction.
        size: image side in pixels.
        extent: half-width of the view in world units (points outside are dropped).
        radius_px: splat radius in pixels.
        color, background: RGB in [0, 1].

    Example:
        >>> splat(np.zeros((10, 3)), size=32).shape
        (32, 32, 3)
    """
    p = np.asarray(points.detach().cpu() if hasattr(points, "detach") else points, dtype=np.float64).reshape(-1, 3)
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    q = p @ (rx @ rz).T  # screen x = q[:, 0], screen up = q[:, 2], depth (away from the viewer) = q[:, 1]
    u = (q[:, 0] / extent + 1) * 0.5 * size
    v = (1 - (q[:, 2] / extent + 1) * 0.5) * size
    depth = q[:, 1]
    r = int(math.ceil(radius_px))
    offsets = [(dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1) if dx * dx + dy * dy <= radius_px ** 2]
    px = np.concatenate([np.floor(u).astype(np.int64) + dx for dx, _ in offsets])
    py = np.concatenate([np.floor(v).astype(np.int64) + dy for _, dy in offsets])
    d = np.tile(depth, len(offsets))
    keep = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    pix, d = py[keep] * size + px[keep], d[keep]
    order = np.lexsort((d, pix))  # by pixel, then nearest first
    first = np.unique(pix[order], return_index=True)[1]
    pix, d = pix[order][first], d[order][first]
    shade = 0.35 + 0.65 * np.clip(0.5 - 0.5 * d / extent, 0, 1)
    img = np.tile(np.asarray(background, np.float64), (size * size, 1))
    img[pix] = shade[:, None] * np.asarray(color, np.float64)
    return (img.reshape(size, size, 3) * 255).round().astype(np.uint8)


def turntable(clouds, frames: int = 24, size: int = 128, cols: int | None = None, elevation_deg: float = 20.0,
              colors=None, **kwargs) -> np.ndarray:
    """[frames, rows * size, cols * size, 3] uint8: a grid of clouds, each turning a full circle.

    Args:
        clouds: a list of [N_i, 3] clouds (or a [K, N, 3] array).
        colors: optional list of RGB colours, one per cloud.
    """
    clouds = list(clouds)
    cols = cols or min(len(clouds), 4)
    rows = -(-len(clouds) // cols)
    out = np.full((frames, rows * size, cols * size, 3), 255, np.uint8)
    for f in range(frames):
        az = 360.0 * f / frames
        for k, c in enumerate(clouds):
            i, j = divmod(k, cols)
            extra = {"color": colors[k]} if colors is not None else {}
            out[f, i * size:(i + 1) * size, j * size:(j + 1) * size] = splat(
                c, az, elevation_deg, size, **extra, **kwargs)
    return out
