"""Pure-PyTorch scans over packed segments, the specification of ``segment_scan``.

The maths of nerfacc's ``inclusive_sum``, ``exclusive_sum``, ``inclusive_prod`` and
``exclusive_prod`` on packed input. Segment ``r`` owns the elements ``[start_r, start_r +
count_r)`` with ``packed_info[r] = (start_r, count_r)``; within a segment, in order:

* inclusive sum ``y_i = sum_{j <= i} x_j``; exclusive sum ``y_i = sum_{j < i} x_j`` (0 first);
* inclusive prod ``y_i = prod_{j <= i} x_j``; exclusive prod ``y_i = prod_{j < i} x_j`` (1 first).

Elements that no segment covers get the identity (0 for sums, 1 for products) and no gradient.
Segments must not overlap.

Method: the segments are laid out as a padded ``[R, max_count]`` matrix padded with the identity,
so the scans are plain ``cumsum`` / ``cumprod`` along dim 1 (memory ``O(R * max_count)``; the
kernels need none).
"""

from __future__ import annotations

import torch

from pyengine.reference.composite import _gather, _padded_index, _scatter

__all__ = ["segment_scan", "segment_scan_fwd"]


def segment_scan(x: torch.Tensor, packed_info: torch.Tensor, prod: bool = False,
                 exclusive: bool = False) -> torch.Tensor:
    """Scan of each packed segment of ``x``, plain PyTorch (differentiable by autograd).

    Args:
        x: [S] values.
        packed_info: [R, 2] integer (start, count) of each segment.
        prod: products instead of sums.
        exclusive: leave the element itself out (the first element gets the identity).

    Returns:
        [S] in x's dtype.

    Example:
        >>> segment_scan(torch.arange(1.0, 6.0), torch.tensor([[0, 2], [2, 3]]))
        tensor([ 1.,  3.,  3.,  7., 12.])
    """
    identity = 1.0 if prod else 0.0
    index, mask = _padded_index(packed_info)
    pad = torch.where(mask, _gather(x, index, mask), torch.full_like(mask, identity, dtype=x.dtype))
    scan = torch.cumprod(pad, 1) if prod else torch.cumsum(pad, 1)
    if exclusive:
        scan = torch.cat([torch.full_like(scan[:, :1], identity), scan[:, :-1]], 1)
    return _scatter(scan, index, mask, x.shape[0], identity)


def segment_scan_fwd(x, packed_info, prod, exclusive):
    """``segment_scan`` with the kernels' arguments."""
    return segment_scan(x, packed_info, prod, exclusive)
