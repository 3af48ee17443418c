"""``antialias``: analytic antialiasing of silhouette edges with nvdiffrast's semantics, differentiable
w.r.t. the colours and the vertex positions (the silhouette gradients that rasterization lacks).

``antialias()`` checks its inputs (tri's indices and rast's ids too, unless ``validate=False``) and
runs the op defined below. Kernels (``pyengine.reference.antialias``, ``pyengine._C``):
``antialias_fwd(color [B, H, W, C], rast [B, H, W, 4], pos [Bp, V, 4], tri [T, 3] int64, topology
[T, 3] int64, pos_grad_eps)`` with Bp = 1 or B, all floats of one dtype, and ``antialias_bwd``. The rules (which
pairs blend, which edge, the weights and their gradients) are the reference's module docstring;
the kernels make the same decisions bit for bit (csrc/include/pyengine/antialias.h says how).

Determinism: the forward and grad_color are the same on every run; grad_pos of the cpu kernels is
summed in a fixed order, the cuda kernels add it with float atomics (last bits vary run to run).
"""

from __future__ import annotations

import torch

from pyengine.ops._define import FLOAT, INDEX, T, check, define
from pyengine.ops.rasterize import check_rast_ids, check_tri
from pyengine.reference import antialias as _ref
from pyengine.reference.antialias import antialias_topology

__all__ = ["antialias", "antialias_topology"]

MAX_FLOAT32_TRIANGLES = 1 << 24  # ids + 1 exact in a float32 rast

OP = define(
    "antialias", "(Tensor color, Tensor rast, Tensor pos, Tensor tri, Tensor topology, float pos_grad_eps) -> Tensor",
    grads=("color", "pos"), fake=lambda color, rast, pos, tri, topology, pos_grad_eps: torch.empty_like(color),
    reference=_ref, cpu=True, cuda=True)


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by a constant (``pos_gradient_boost``)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology: torch.Tensor | None = None, *, pos_gradient_boost: float = 1.0,
              pos_grad_eps: float = 1e-3, backend: str | None = None, validate: bool = True) -> torch.Tensor:
    """Antialiases the silhouette edges of a rendered image (nvdiffrast's ``antialias``).

    For every pair of horizontally or vertically adjacent pixels whose triangle ids differ, the
    silhouette edge of the nearer pixel's triangle that crosses the segment between the two pixel
    centres (an edge with no neighbouring triangle, or whose neighbour faces the other way as seen
    from the camera) blends the two colours in proportion to where it crosses: the pixel beyond
    the crossing's midpoint takes ``alpha = |1/2 - crossing fraction|`` of the other's colour.
    Gradients flow to ``color`` and, through the crossing position, to the edge's two vertices in
    ``pos``: moving a silhouette moves the blend, which is what gives silhouettes gradients.
    Every rule (ties, tolerances, the gradient's 1e-3 pixel regulariser) is stated in
    ``pyengine.reference.antialias``.

    Silhouette detection uses vertex indices: a vertex shared by several triangles must have one
    index, or the edges between them count as silhouettes (as in nvdiffrast).

    Args:
        color: [B, H, W, C] image to antialias, float (computed in float64 if any input is
            float64, else float32).
        rast: [B, H, W, 4] from ``rasterize(pos, tri, (H, W))``.
        pos: [B, V, 4] or [V, 4] (one mesh for every image; also [1, V, 4]) clip-space positions
            used for rast, float32 / float64.
        tri: [T, 3] int32 / int64 vertex indices in [0, V).
        topology: [T, 3] int from ``antialias_topology(tri)``: pass it when tri is the same from
            call to call to save recomputing it (a sort over the 3 T edges); default: computed.
        pos_gradient_boost: multiplies the gradient that reaches pos (nvdiffrast's option).
        pos_grad_eps: the regulariser of the position gradient: ``1 / (dy + copysign(eps, dy))``
            stands for ``1 / dy``, dy the crossing edge's extent across the pixel pair in pixels.
            nvdiffrast's 1e-3 by default (a relative error of ``1e-3 / |dy|`` that tames
            sub-pixel edges); 0 gives the exact derivative of the forward.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).
        validate: check tri's indices and rast's ids (a device sync each, once per unchanged tensor;
            none for ``rasterize``'s rast); unchecked, the kernels
            skip pairs whose ids or triangles are out of range.

    Returns:
        [B, H, W, C], the antialiased image.

    Example:
        >>> from pyengine.reference.rasterize import rasterize
        >>> pos = torch.tensor([[-0.9, -0.9, 0.0, 1.0], [0.9, -0.6, 0.0, 1.0], [-0.3, 0.8, 0.0, 1.0]])
        >>> tri = torch.tensor([[0, 1, 2]])
        >>> rast = rasterize(pos, tri, (8, 8))
        >>> out = antialias((rast[..., 3:] > 0).float(), rast, pos, tri)
        >>> out.shape, bool(((out > 0) & (out < 1)).any())
        (torch.Size([1, 8, 8, 1]), True)
    """
    if isinstance(pos, torch.Tensor) and pos.dim() == 2:
        pos_spec = T(FLOAT[2:], "V 4")
    else:
        pos_spec = T(FLOAT[2:], "P V 4")
    specs = {"color": T(FLOAT, "B H W C"), "rast": T(FLOAT[2:], "B H W 4"), "pos": pos_spec,
             "tri": T(INDEX, "T 3"), "topology": T(INDEX, "T 3", optional=True)}
    check("antialias", specs, {"color": color, "rast": rast, "pos": pos, "tri": tri, "topology": topology})
    if pos.dim() == 2:
        pos = pos[None]
    if pos.shape[0] not in (1, color.shape[0]):
        raise ValueError(f"antialias: pos must be [V, 4], [1, V, 4] or [B, V, 4] with B = {color.shape[0]} "
                         f"(from color), got shape {tuple(pos.shape)}")
    dtype = torch.float64 if torch.float64 in (color.dtype, rast.dtype, pos.dtype) else torch.float32
    if dtype == torch.float32 and tri.shape[0] > MAX_FLOAT32_TRIANGLES:
        raise ValueError(f"antialias: a float32 rast holds at most 2^24 triangle ids, got {tri.shape[0]} triangles; "
                         "pass float64")
    if validate:
        check_tri("antialias", tri, pos.shape[1])  # each once per unchanged tensor (_checked)
        check_rast_ids("antialias", rast, tri.shape[0])
    if topology is None:
        topology = antialias_topology(tri)
    if not (isinstance(pos_grad_eps, (int, float)) and not isinstance(pos_grad_eps, bool) and pos_grad_eps >= 0):
        raise ValueError(f"antialias: pos_grad_eps must be a float >= 0, got {pos_grad_eps!r}")
    if pos_gradient_boost != 1.0:
        pos = _ScaleGrad.apply(pos, float(pos_gradient_boost))
    return OP(color.to(dtype).contiguous(), rast.to(dtype).contiguous(), pos.to(dtype).contiguous(),
              tri.to(torch.int64).contiguous(), topology.to(torch.int64).contiguous(), float(pos_grad_eps),
              backend=backend)
