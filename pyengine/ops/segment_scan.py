"""``segment_scan``: inclusive / exclusive sums and products over packed segments, with backward.

The fused replacement of nerfacc's ``inclusive_sum``, ``exclusive_sum``, ``inclusive_prod`` and
``exclusive_prod`` on packed input: one pass per segment, no padding to the longest segment.
Kernels (``pyengine.reference.segment_scan``, ``pyengine._C``): ``segment_scan_fwd(x,
packed_info, prod, exclusive)`` and ``segment_scan_bwd``.
"""

from __future__ import annotations

import torch

from pyengine.ops._define import FLOAT, INDEX, T, check, define
from pyengine.reference import segment_scan as _ref

__all__ = ["segment_scan"]

OP = define("segment_scan", "(Tensor x, Tensor packed_info, bool prod, bool exclusive) -> Tensor", grads=("x",),
            fake=lambda x, *a: torch.empty_like(x), reference=_ref, cpu=True, cuda=True)


def segment_scan(x: torch.Tensor, packed_info: torch.Tensor, *, prod: bool = False, exclusive: bool = False,
                 backend: str | None = None) -> torch.Tensor:
    """Scans every packed segment of ``x`` (sums or products, inclusive or exclusive).

    Segment ``r`` owns ``x[start_r : start_r + count_r]`` with ``packed_info[r] = (start_r,
    count_r)``; segments must not overlap (ranges outside ``[0, S)`` are clamped by the
    kernels). Elements that no segment covers get the identity (0, or 1 for products). Exact rules:
    ``pyengine.reference.segment_scan``. The backward never divides, so zeros in a product keep
    exact gradients.

    Args:
        x: [S] float16 / bfloat16 / float32 / float64 (half types are computed in float32).
        packed_info: [R, 2] int32 / int64 (start, count), e.g. from ``pack_info``.
        prod: products instead of sums. exclusive: leave each element out of its own result.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        [S] in x's dtype, differentiable w.r.t. x.

    Example:
        >>> segment_scan(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([[0, 2], [2, 2]]), exclusive=True)
        tensor([0., 1., 0., 3.])
    """
    check("segment_scan", {"x": T(FLOAT, "S"), "packed_info": T(INDEX, "R 2")}, {"x": x, "packed_info": packed_info})
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = OP(x.to(compute).contiguous(), packed_info.to(torch.int64).contiguous(), bool(prod), bool(exclusive),
             backend=backend)
    return out.to(x.dtype)
