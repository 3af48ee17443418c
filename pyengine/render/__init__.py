"""Cameras, ray generation and volume rendering."""

from pyengine.render.camera import Cameras, generate_rays, look_at, orbit_cameras, random_orbit_cameras, rays_for_pixels

__all__ = ["Cameras", "generate_rays", "look_at", "orbit_cameras", "random_orbit_cameras", "rays_for_pixels",
           "render_image", "render_rays"]


def __getattr__(name):  # the volume renderer imports the ops; load it on first use
    if name in ("render_image", "render_rays"):
        from pyengine.render import volume

        return getattr(volume, name)
    raise AttributeError(name)
