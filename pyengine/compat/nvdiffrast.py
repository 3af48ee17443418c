"""Stand-in for ``nvdiffrast.torch`` on pyengine's ops, with no OpenGL, EGL or CUDA build.

threestudio-style code does ``import nvdiffrast.torch as dr`` and calls ``dr.rasterize``,
``dr.interpolate``, ``dr.antialias`` and ``dr.texture`` with a context object; this module offers
the same names, argument order and return values::

    import pyengine.compat.nvdiffrast as dr
    ctx = dr.RasterizeCudaContext()          # or RasterizeGLContext(): both are placeholders
    rast, rast_db = dr.rasterize(ctx, pos, tri, resolution=[H, W])
    col, _ = dr.interpolate(vtx_col, rast, tri)
    col = dr.antialias(col, rast, pos, tri)
    tex = dr.texture(texture, uv, filter_mode="linear", boundary_mode="wrap")

The work is done by ``pyengine.ops.rasterize`` / ``interpolate`` / ``antialias`` / ``texture``
(C++/OpenMP on CPUs, CUDA on GPUs, a PyTorch reference), whose docstrings hold the semantics.

Where it differs from nvdiffrast:

* ``rast_db`` (image-space derivatives of the barycentrics) is not computed: ``rasterize``
  returns zeros for it, ``interpolate`` ignores ``rast_db``, refuses ``diff_attrs`` and returns an
  empty ``[B, H, W, 0]`` derivative; mipmapped filtering (``linear-mipmap-*``, ``uv_da``, ``mip``)
  and cube maps raise ``NotImplementedError``.
* ``ranges`` (range mode) is not supported: pass ``pos`` as ``[B, V, 4]`` (instanced mode).
* Pixels exactly on an edge shared by two triangles go to the nearer, then the lower id (no
  top-left fill rule), so a few edge pixels may differ from OpenGL's.
* ``antialias``'s ``topology_hash`` is the tensor :func:`antialias_construct_topology_hash` returns.
"""

from __future__ import annotations

import torch

from pyengine.ops.antialias import antialias as _antialias
from pyengine.ops.antialias import antialias_topology
from pyengine.ops.rasterize import interpolate as _interpolate
from pyengine.ops.rasterize import rasterize as _rasterize
from pyengine.ops.texture import texture as _texture

__all__ = ["RasterizeCudaContext", "RasterizeGLContext", "antialias", "antialias_construct_topology_hash",
           "interpolate", "rasterize", "texture"]


class RasterizeCudaContext:
    """Placeholder for nvdiffrast's context: pyengine's rasterizer needs no context (any device)."""

    def __init__(self, device=None):
        self.device = device


class RasterizeGLContext(RasterizeCudaContext):
    """Placeholder for nvdiffrast's OpenGL context: no OpenGL is used."""

    def __init__(self, output_db: bool = True, mode: str = "automatic", device=None):
        super().__init__(device)
        self.output_db = output_db


def rasterize(glctx, pos: torch.Tensor, tri: torch.Tensor, resolution, ranges=None,
              grad_db: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rast [B, H, W, 4], rast_db [B, H, W, 4])``; rast_db is zeros (not computed)."""
    if ranges is not None:
        raise NotImplementedError("pyengine.compat.nvdiffrast.rasterize: range mode (ranges=) is not supported; "
                                  "pass pos as [B, V, 4]")
    if not isinstance(glctx, RasterizeCudaContext) and glctx is not None:
        raise TypeError(f"rasterize: glctx must be a RasterizeCudaContext or RasterizeGLContext, got "
                        f"{type(glctx).__name__}")
    rast = _rasterize(pos, tri, tuple(int(r) for r in resolution))
    return rast, torch.zeros_like(rast)


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, rast_db=None,
                diff_attrs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, H, W, C], out_da [B, H, W, 0])``; attribute derivatives are not computed."""
    if diff_attrs is not None:
        raise NotImplementedError("pyengine.compat.nvdiffrast.interpolate: diff_attrs (image-space attribute "
                                  "derivatives) are not supported")
    out = _interpolate(attr, rast, tri)
    return out, out.new_zeros(*out.shape[:3], 0)


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor, topology_hash=None,
              pos_gradient_boost: float = 1.0) -> torch.Tensor:
    """Analytic antialiasing of silhouette edges (see ``pyengine.ops.antialias``)."""
    return _antialias(color, rast, pos, tri, topology_hash, pos_gradient_boost=pos_gradient_boost)


def antialias_construct_topology_hash(tri: torch.Tensor) -> torch.Tensor:
    """The edge topology ``antialias`` needs, computed once for a fixed mesh."""
    return antialias_topology(tri)


def texture(tex: torch.Tensor, uv: torch.Tensor, uv_da=None, mip_level_bias=None, mip=None,
            filter_mode: str = "auto", boundary_mode: str = "wrap", max_mip_level=None) -> torch.Tensor:
    """Texture lookups ``[B, h, w, C]``; ``auto`` means ``linear`` (there are no mipmaps)."""
    if filter_mode == "auto":
        filter_mode = "linear"
    if filter_mode.startswith("linear-mipmap") or mip is not None or uv_da is not None:
        raise NotImplementedError("pyengine.compat.nvdiffrast.texture: mipmaps are not supported (filter_mode "
                                  "'linear' or 'nearest', no uv_da / mip)")
    if boundary_mode == "cube":
        raise NotImplementedError("pyengine.compat.nvdiffrast.texture: cube maps are not supported")
    return _texture(tex, uv, filter_mode, boundary_mode)
