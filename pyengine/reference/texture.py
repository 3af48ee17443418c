"""Pure-PyTorch 2D texture sampling, the specification of ``texture`` (the nearest and bilinear
modes of nvdiffrast's ``texture``, without mipmaps).

Inputs: ``tex [Bt, Ht, Wt, C]`` (``Bt = 1``: one texture for every image, or ``Bt = B``) and
``uv [B, h, w, 2]``. ``u`` runs along the texture's width (columns), ``v`` along its height
(rows, row 0 at ``v = 0``); texel ``(row j, column i)`` covers ``[i, i + 1] / Wt x [j, j + 1] /
Ht`` and has its centre at ``((i + 0.5) / Wt, (j + 0.5) / Ht)`` (nvdiffrast's and OpenGL's
convention). Per output pixel, with ``(u, v)`` its coordinates (each axis alike):

* ``wrap`` first replaces ``u`` by ``u - floor(u)`` (the pattern repeats every unit);
* ``nearest``: the texel ``floor(u Wt)``; ``zero`` gives 0 when it is outside ``[0, Wt)``;
  otherwise (``wrap``, ``clamp``) it is clamped into ``[0, Wt - 1]`` (``wrap`` needs that only for
  ``u`` that rounds to 1);
* ``linear``: ``s = u Wt - 0.5`` (texel centres at integer ``s``). ``clamp`` clamps ``s`` into
  ``[0, Wt - 1]`` (the centres of the edge texels) and, when ``s`` is then 0 or ``Wt - 1``, uses
  the same texel twice (``i1 = i0``: no gradient w.r.t. ``u`` there). ``i0 = floor(s)``, ``i1 = i0
  + 1``, ``f = s - i0``; ``wrap`` maps ``i0 = -1`` to ``Wt - 1`` and ``i1 = Wt`` to 0; ``zero`` reads
  0 for texels outside the texture. Then, with ``a_xy`` the texel at ``(i_x, j_y)``,
  ``out = lerp(lerp(a00, a10, fu), lerp(a01, a11, fu), fv)``, ``lerp(a, b, c) = a + c (b - a)``.
* A pixel with a non-finite ``u`` or ``v`` gives 0 and no gradient.

Gradients: to tex (the filter weights, summed over images for a shared texture) and, in linear
mode, to uv (``d out / d u = Wt d out / d s``, through the wrap as the identity); nearest
filtering is piecewise constant in uv and gives uv no gradient, as in nvdiffrast.

Not provided (nvdiffrast has them): mipmaps and the modes that use them
(``linear-mipmap-nearest``, ``linear-mipmap-linear``, ``uv_da``, ``mip_level_bias``), cube maps
(``boundary_mode="cube"``). ``filter_mode="auto"`` means ``linear``, as in nvdiffrast without
derivatives. float64 is computed by the same formulas (nvdiffrast: float32 only).
"""

from __future__ import annotations

import torch

__all__ = ["BOUNDARY_MODES", "FILTER_MODES", "texture", "texture_fwd"]

FILTER_MODES = ("nearest", "linear")  # the kernels' filter_mode argument is the index
BOUNDARY_MODES = ("wrap", "clamp", "zero")  # the kernels' boundary_mode argument is the index


def _axis(u: torch.Tensor, n: int, linear: bool, boundary: str):
    """Texel indices and weights along one axis of n texels: (i0, i1, f, ok0, ok1) with i0, i1
    int64 in [0, n), f the weight of i1 (differentiable; 0 for nearest) and ok the texels that
    are read (the rest read as 0)."""
    nf = float(n)
    if boundary == "wrap":
        u = u - torch.floor(u.detach())
    if not linear:
        i = torch.floor(u.detach() * nf)
        ok = (i >= 0) & (i < nf) if boundary == "zero" else torch.ones_like(i, dtype=torch.bool)
        i = i.clamp(0, n - 1).long()
        return i, i, torch.zeros_like(u), ok, torch.zeros_like(ok)
    s = u * nf - 0.5
    if boundary == "clamp":
        s = s.clamp(0, n - 1)
        same = (s.detach() == 0) | (s.detach() == n - 1)
    else:
        if boundary == "zero":
            s = s.clamp(-2, n + 1)  # keeps the indices small; every texel read there is 0 anyway
        same = torch.zeros_like(s, dtype=torch.bool)
    i0 = torch.floor(s.detach())
    f = s - i0
    i1 = torch.where(same, i0, i0 + 1)
    if boundary == "wrap":
        i0 = torch.where(i0 < 0, i0 + nf, i0)
        i1 = torch.where(i1 >= nf, i1 - nf, i1)
    ok0, ok1 = (i0 >= 0) & (i0 < nf), (i1 >= 0) & (i1 < nf)
    return i0.clamp(0, n - 1).long(), i1.clamp(0, n - 1).long(), f, ok0, ok1


def texture_fwd(tex: torch.Tensor, uv: torch.Tensor, filter_mode: int, boundary_mode: int) -> torch.Tensor:
    """``texture`` with the kernels' arguments: tex [Bt, Ht, Wt, C] (Bt = 1 or B), uv [B, h, w, 2]
    of tex's dtype, filter_mode an index into FILTER_MODES, boundary_mode into BOUNDARY_MODES ->
    [B, h, w, C]."""
    B, h, w, _ = uv.shape
    Bt, Ht, Wt, C = tex.shape
    linear = FILTER_MODES[filter_mode] == "linear"
    boundary = BOUNDARY_MODES[boundary_mode]
    if B * h * w * C == 0 or Ht * Wt == 0:
        return tex.new_zeros(B, h, w, C)
    u, v = uv[..., 0], uv[..., 1]
    finite = torch.isfinite(u.detach()) & torch.isfinite(v.detach())
    zero = torch.zeros((), dtype=uv.dtype, device=uv.device)
    u, v = torch.where(finite, u, zero), torch.where(finite, v, zero)
    iu0, iu1, fu, oku0, oku1 = _axis(u, Wt, linear, boundary)
    iv0, iv1, fv, okv0, okv1 = _axis(v, Ht, linear, boundary)
    flat = tex.reshape(-1, C)
    base = (torch.arange(B, device=uv.device) if Bt == B else torch.zeros(B, dtype=torch.int64, device=uv.device))
    base = (base * (Ht * Wt))[:, None, None]

    def fetch(iu, iv, ok):
        a = flat[(base + iv * Wt + iu).reshape(-1)].reshape(B, h, w, C)
        return torch.where((ok & finite)[..., None], a, torch.zeros((), dtype=tex.dtype, device=tex.device))

    a00 = fetch(iu0, iv0, oku0 & okv0)
    if not linear:
        return a00
    a10, a01, a11 = fetch(iu1, iv0, oku1 & okv0), fetch(iu0, iv1, oku0 & okv1), fetch(iu1, iv1, oku1 & okv1)
    fu, fv = fu[..., None], fv[..., None]
    top = a00 + fu * (a10 - a00)
    bottom = a01 + fu * (a11 - a01)
    return top + fv * (bottom - top)


def texture(tex: torch.Tensor, uv: torch.Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap"):
    """Samples 2D textures (module docstring), plain PyTorch, differentiable w.r.t. tex and uv.

    Args:
        tex: [Bt, Ht, Wt, C] (Bt = 1 or B) or [Ht, Wt, C] textures.
        uv: [B, h, w, 2] texture coordinates.
        filter_mode: "nearest", "linear" or "auto" (= "linear").
        boundary_mode: "wrap", "clamp" or "zero".

    Returns:
        [B, h, w, C] in the promoted dtype of tex and uv.

    Example:
        >>> tex = torch.arange(4.0).reshape(1, 2, 2, 1)  # texels 0 1 / 2 3
        >>> uv = torch.tensor([[[[0.25, 0.25], [0.5, 0.5]]]])  # a texel centre, the middle
        >>> texture(tex, uv)[..., 0]
        tensor([[[0.0000, 1.5000]]])
    """
    if tex.dim() == 3:
        tex = tex[None]
    dtype = torch.promote_types(tex.dtype, uv.dtype)
    fm = "linear" if filter_mode == "auto" else filter_mode
    return texture_fwd(tex.to(dtype), uv.to(dtype), FILTER_MODES.index(fm), BOUNDARY_MODES.index(boundary_mode))
