"""``texture``: 2D texture sampling with nvdiffrast's conventions (nearest and bilinear filtering,
wrap / clamp / zero boundaries; no mipmaps, no cube maps), differentiable w.r.t. the texture and the
texture coordinates.

``texture()`` checks its inputs and runs the op defined below. Kernels (``pyengine.reference.texture``,
``pyengine._C``): ``texture_fwd(tex [Bt, Ht, Wt, C], uv [B, h, w, 2], filter_mode, boundary_mode)``
with Bt = 1 or B, both of one float dtype, the modes as indices into ``FILTER_MODES`` and
``BOUNDARY_MODES``; ``texture_bwd``. The semantics are the reference's module docstring; the kernels
pick the same texels and weights bit for bit (csrc/include/pyengine/texture.h).

Determinism: forward and grad_uv are the same on every run; grad_tex of the cpu kernels is summed
in a fixed order, the cuda kernels add it with float atomics (last bits vary run to run).
"""

from __future__ import annotations

import torch

from pyengine.ops._define import FLOAT, T, check, define
from pyengine.reference import texture as _ref
from pyengine.reference.texture import BOUNDARY_MODES, FILTER_MODES

__all__ = ["texture"]

OP = define(
    "texture", "(Tensor tex, Tensor uv, int filter_mode, int boundary_mode) -> Tensor", grads=("tex", "uv"),
    fake=lambda tex, uv, filter_mode, boundary_mode: tex.new_empty(*uv.shape[:3], tex.shape[3]),
    reference=_ref, cpu=True, cuda=True)


def texture(tex: torch.Tensor, uv: torch.Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap", *,
            backend: str | None = None) -> torch.Tensor:
    """Samples 2D textures at per-pixel texture coordinates (nvdiffrast's ``texture`` without mipmaps).

    ``u`` runs along the texture's width and ``v`` along its height, row 0 at ``v = 0``; texel
    ``(j, i)`` has its centre at ``((i + 0.5) / Wt, (j + 0.5) / Ht)``, so ``uv`` in ``[0, 1]^2``
    covers the texture exactly. ``linear`` interpolates the four nearest texel centres
    bilinearly, ``nearest`` reads the texel that contains ``uv``. Outside ``[0, 1]``: ``wrap``
    repeats the texture, ``clamp`` holds the edge texels' values, ``zero`` fades to zeros beyond
    the edge texels' centres (``linear``) or reads zeros outside (``nearest``). Non-finite
    coordinates give zeros. The exact rules are ``pyengine.reference.texture``'s.

    Not provided: mipmapped filtering (``linear-mipmap-*``, ``uv_da``, ``mip_level_bias``, ``mip``)
    and cube maps (``boundary_mode="cube"``).

    Args:
        tex: [B, Ht, Wt, C] per-image or [1, Ht, Wt, C] / [Ht, Wt, C] shared textures, float
            (computed in float64 if tex or uv is float64, else float32).
        uv: [B, h, w, 2] texture coordinates, float.
        filter_mode: "linear" (default), "nearest" or "auto" (= "linear", as in nvdiffrast without
            derivatives).
        boundary_mode: "wrap" (default), "clamp" or "zero".
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        [B, h, w, C]. Differentiable w.r.t. tex and, with linear filtering, uv (nearest gives uv a
        zero gradient).

    Example:
        >>> tex = torch.arange(4.0).reshape(1, 2, 2, 1)  # texels 0 1 / 2 3
        >>> uv = torch.tensor([[[[0.25, 0.25], [0.5, 0.5], [0.9, 0.1]]]])
        >>> texture(tex, uv)[0, 0, :, 0]  # a texel centre, the middle, a wrapped corner
        tensor([0.0000, 1.5000, 1.3000])
    """
    for name, value, allowed in (("filter_mode", filter_mode, FILTER_MODES + ("auto",)),
                                 ("boundary_mode", boundary_mode, BOUNDARY_MODES)):
        if value not in allowed:
            extra = " (mipmaps and cube maps are not provided)" if value in (
                "linear-mipmap-nearest", "linear-mipmap-linear", "cube") else ""
            raise ValueError(f"texture: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}{extra}")
    if isinstance(tex, torch.Tensor) and tex.dim() == 3:
        tex = tex[None]
    check("texture", {"tex": T(FLOAT, "P Ht Wt C"), "uv": T(FLOAT, "B H W 2")}, {"tex": tex, "uv": uv})
    if tex.shape[0] not in (1, uv.shape[0]):
        raise ValueError(f"texture: tex must be [Ht, Wt, C], [1, Ht, Wt, C] or [B, Ht, Wt, C] with B = {uv.shape[0]} "
                         f"(from uv), got shape {tuple(tex.shape)}")
    dtype = torch.float64 if torch.float64 in (tex.dtype, uv.dtype) else torch.float32
    fm = FILTER_MODES.index("linear" if filter_mode == "auto" else filter_mode)
    return OP(tex.to(dtype).contiguous(), uv.to(dtype).contiguous(), fm, BOUNDARY_MODES.index(boundary_mode),
              backend=backend)
