"""``rasterize`` and ``interpolate``: triangle rasterization with nvdiffrast's semantics (no OpenGL),
differentiable w.r.t. vertex positions and attributes.

``rasterize()`` and ``interpolate()`` check their inputs (tri's indices and rast's ids too, unless
``validate=False``) and run the ops defined below. Kernels (``pyengine.reference.rasterize``,
``pyengine._C``): ``rasterize_fwd(pos [B, V, 4], tri [T, 3] int64, height, width) -> rast`` with
``rasterize_bwd`` reading the forward's rast, and ``interpolate_fwd(attr [Ba, V, C], rast, tri)``
with ``interpolate_bwd``. The semantics (pixel centres, coverage, depth test, tie rule) are the
reference's module docstring; the kernels reproduce its forward bit for bit
(csrc/include/pyengine/rasterize.h says how).

Determinism: forward outputs are the same on every backend and run. The backward of the cpu
kernels sums in a fixed order (bit-identical from run to run, whatever the thread count); the
cuda kernels add with float atomics, so the last bits of grad_pos / grad_attr vary from run to
run.

Not provided: nvdiffrast's image-space derivatives (``rast_db``, ``diff_attrs``), its range mode
(``ranges``), ``grad_db``, ``antialias``; edge (silhouette) gradients are antialias's job.
"""

from __future__ import annotations

import operator

import torch

from pyengine.ops import _checked
from pyengine.ops._define import F32_F64, INDEX, T, check, define
from pyengine.reference import rasterize as _ref

__all__ = ["interpolate", "rasterize"]

MAX_RESOLUTION = 1 << 15  # pixel centres (2 i + 1) / n - 1 stay exact in float32
MAX_FLOAT32_TRIANGLES = 1 << 24  # ids + 1 are exact integers in a float32 rast up to 2^24

RAST_OP = define(
    "rasterize", "(Tensor pos, Tensor tri, int height, int width) -> Tensor", grads=("pos",), save=(0,),
    fake=lambda pos, tri, height, width: pos.new_empty(pos.shape[0], height, width, 4),
    reference=_ref, cpu=True, cuda=True)

INTERP_OP = define(
    "interpolate", "(Tensor attr, Tensor rast, Tensor tri) -> Tensor", grads=("attr", "rast"),
    fake=lambda attr, rast, tri: rast.new_empty(*rast.shape[:3], attr.shape[2]),
    reference=_ref, cpu=True, cuda=True)


def check_tri(op: str, tri: torch.Tensor, n_vertices: int) -> None:
    """Raises ValueError unless every index of tri lies in [0, n_vertices). One device sync, once
    per unchanged ``tri`` and ``n_vertices`` (``_checked``)."""
    if tri.numel() == 0 or _checked.passed(tri, ("tri", n_vertices)):
        return
    bad = (tri < 0) | (tri >= n_vertices)
    if bool(bad.any()):
        t, k = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{op}: tri must hold vertex indices in [0, V) = [0, {n_vertices}); tri[{t}, {k}] = "
                         f"{int(tri[t, k])}")
    _checked.mark(tri, ("tri", n_vertices))


def _resolution(resolution) -> tuple[int, int]:
    def as_int(n):
        if isinstance(n, bool):
            raise TypeError
        return operator.index(n)  # ints, numpy integers; not floats

    try:
        H, W = (as_int(n) for n in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"rasterize: resolution must be (height, width), two ints, got {resolution!r}") from None
    if not (0 <= H <= MAX_RESOLUTION and 0 <= W <= MAX_RESOLUTION):
        raise ValueError(f"rasterize: resolution must lie in [0, {MAX_RESOLUTION}] (0: an empty image), got "
                         f"{(H, W)}")
    return H, W


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution, *, backend: str | None = None,
              validate: bool = True) -> torch.Tensor:
    """Rasterizes triangles: per pixel ``(u, v, z/w, triangle_id + 1)`` of the visible triangle.

    Pixel (row ``py``, column ``px``) has its centre at NDC ``X = (2 px + 1) / W - 1``, ``Y = (2 py
    + 1) / H - 1`` (row 0 is ``y = -1``, OpenGL's convention, as nvdiffrast). A triangle covers a
    pixel centre when its perspective-correct barycentrics there are all >= 0 (either winding),
    the interpolated w is > 0 and ``-1 <= z/w <= 1``; ``u`` and ``v`` are the barycentrics of
    the triangle's vertices 0 and 1, so an attribute interpolates as ``u a_0 + v a_1 + (1 - u -
    v) a_2``. Visibility: the smallest z/w (compared in float32, like a depth buffer) wins;
    equal depths go to the smaller triangle id, so the output does not depend on scheduling. A
    pixel centre on an edge shared by two triangles is covered by both (no top-left rule), so
    the depth test decides. The exact maths is ``pyengine.reference.rasterize``.

    Gradients flow to pos through u, v and z/w of the winning triangle; which triangle wins, and
    whether a pixel is covered, is piecewise constant (no silhouette gradients: that is
    ``antialias``'s job in nvdiffrast, not provided here).

    Triangles that cross the camera plane (some vertex at w <= 0, another at w > 0) are tested
    against every pixel, which is correct but slow for many such triangles; triangles with no
    vertex at w > 0 cover nothing.

    Args:
        pos: [B, V, 4] clip-space positions (x, y, z, w), float32 or float64; [V, 4] is one image.
        tri: [T, 3] int32 / int64 vertex indices in [0, V) (checked unless ``validate=False``;
            unchecked, a triangle with an index out of range covers nothing in the cpu / cuda
            kernels). Float32 pos allows at most 2^24 triangles (ids exact in float32).
        resolution: (H, W), ints in [0, 32768] (0 gives an empty image).
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).
        validate: check tri's indices (one device sync, once per unchanged tri and vertex count:
            a mesh reused in a loop is checked on its first call only).

    Returns:
        rast: [B, H, W, 4] in pos's dtype ([1, H, W, 4] for a [V, 4] pos); all zeros at pixels
        no triangle covers.

    Example:
        >>> pos = torch.tensor([[-0.8, -0.8, 0.5, 1.0], [0.8, -0.8, 0.5, 1.0], [0.0, 0.8, 0.5, 1.0]])
        >>> rast = rasterize(pos, torch.tensor([[0, 1, 2]]), (4, 5))
        >>> rast.shape, rast[0, 1, 2]
        (torch.Size([1, 4, 5, 4]), tensor([0.3281, 0.3281, 0.5000, 1.0000]))
    """
    if isinstance(pos, torch.Tensor) and pos.dim() == 2:
        check("rasterize", {"pos": T(F32_F64, "V 4"), "tri": T(INDEX, "T 3")}, {"pos": pos, "tri": tri})
        pos = pos[None]
    else:
        check("rasterize", {"pos": T(F32_F64, "B V 4"), "tri": T(INDEX, "T 3")}, {"pos": pos, "tri": tri})
    H, W = _resolution(resolution)
    if pos.dtype == torch.float32 and tri.shape[0] > MAX_FLOAT32_TRIANGLES:
        raise ValueError(f"rasterize: float32 pos allows at most 2^24 triangles (ids exact in float32), got "
                         f"{tri.shape[0]}; pass float64 pos")
    if validate:
        check_tri("rasterize", tri, pos.shape[1])
    rast = RAST_OP(pos.contiguous(), tri.to(torch.int64).contiguous(), H, W, backend=backend)
    _checked.mark(rast, ("rast_ids", tri.shape[0]))  # ids + 1 of these triangles, or 0
    return rast


def check_rast_ids(op: str, rast: torch.Tensor, n_tri: int) -> None:
    """Raises ValueError unless rast's id channel, rounded, lies in [0, n_tri]. One device sync,
    none for an unchanged ``rast`` that ``rasterize`` made for ``n_tri`` triangles or that passed."""
    if rast.numel() == 0 or _checked.passed(rast, ("rast_ids", n_tri)):
        return
    ids = torch.round(rast[..., 3])
    bad = ~((ids >= 0) & (ids <= n_tri))  # NaN is bad too
    if bool(bad.any()):
        b, y, x = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{op}: rast[..., 3] must hold triangle ids + 1 in [0, T] = [0, {n_tri}]; "
                         f"rast[{b}, {y}, {x}, 3] = {float(rast[b, y, x, 3])}")
    _checked.mark(rast, ("rast_ids", n_tri))


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, *, backend: str | None = None,
                validate: bool = True) -> torch.Tensor:
    """Interpolates vertex attributes at every rasterized pixel (nvdiffrast's ``interpolate``).

    ``out[b, y, x] = u attr[t_0] + v attr[t_1] + (1 - u - v) attr[t_2]`` with ``(u, v, _, t + 1)
    = rast[b, y, x]`` and ``(t_0, t_1, t_2) = tri[t]``; zero at empty pixels (id 0). The id channel
    is rounded to the nearest integer. Differentiable w.r.t. attr (a scatter-add over pixels) and
    rast's u and v, so a loss on the output reaches ``pos`` through ``rasterize``. nvdiffrast's
    image-space derivatives (``rast_db``, ``diff_attrs``) are not provided.

    Args:
        attr: [B, V, C] per-image or [V, C] (or [1, V, C]) shared vertex attributes, float32 /
            float64.
        rast: [B, H, W, 4] from ``rasterize``, float32 / float64 (computation in float64 if
            either input is).
        tri: [T, 3] int32 / int64, the triangles rast was made with; indices in [0, V).
        backend: "cuda", "cpu" or "reference"; default: automatic.
        validate: check tri's indices and rast's ids (a device sync each, once per unchanged tensor;
            none for ``rasterize``'s rast); unchecked, the cpu / cuda
            kernels give zeros at pixels whose id or triangle is out of range.

    Returns:
        [B, H, W, C].

    Example:
        >>> pos = torch.tensor([[-0.8, -0.8, 0.5, 1.0], [0.8, -0.8, 0.5, 1.0], [0.0, 0.8, 0.5, 1.0]])
        >>> tri = torch.tensor([[0, 1, 2]])
        >>> colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> interpolate(colors, rasterize(pos, tri, (4, 5)), tri)[0, 1, 2]
        tensor([0.3281, 0.3281, 0.3438])
    """
    if isinstance(attr, torch.Tensor) and attr.dim() == 3 and attr.shape[0] == 1:
        attr = attr[0]  # shared by every image
    flat = isinstance(attr, torch.Tensor) and attr.dim() == 2
    check("interpolate", {"attr": T(F32_F64, "V C" if flat else "B V C"), "rast": T(F32_F64, "B H W 4"),
                          "tri": T(INDEX, "T 3")}, {"attr": attr, "rast": rast, "tri": tri})
    if flat:
        attr = attr[None]
    if validate:
        check_tri("interpolate", tri, attr.shape[1])
        check_rast_ids("interpolate", rast, tri.shape[0])
    dtype = torch.float64 if torch.float64 in (attr.dtype, rast.dtype) else torch.float32
    return INTERP_OP(attr.to(dtype).contiguous(), rast.to(dtype).contiguous(), tri.to(torch.int64).contiguous(),
                     backend=backend)
