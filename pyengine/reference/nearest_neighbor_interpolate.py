"""Pure-PyTorch three-nearest-neighbour interpolation, the specification of
``nearest_neighbor_interpolate`` (PVCNN's formula and epsilon).

Point ``n``: its three nearest centres ``i0, i1, i2`` by squared distance ``d2`` (point minus
centre, see ``points.dist2``), nearest first, equally near centres in index order (a stable sort).
With ``M < 3`` centres the missing ones have index 0 and ``d2 = inf``. Each ``d2`` is clamped into
``[1e-10, 1e10]`` and, with ``s = d0 d1 + d0 d2 + d1 d2``, the weights are
``w0 = d1 d2 / s, w1 = d0 d2 / s, w2 = d0 d1 / s`` (normalised inverse squared distances) and
``out[b, c, n] = w0 f[b, c, i0] + w1 f[b, c, i1] + w2 f[b, c, i2]``. Differentiable w.r.t. the
centres' features only (the coordinates are detached, as PVCNN gives them no gradient). With
``M = 0`` the output, indices and weights are 0.
"""

from __future__ import annotations

import torch

from pyengine.reference.points import dist2

__all__ = ["nearest_neighbor_interpolate", "nearest_neighbor_interpolate_fwd"]


def nearest_neighbor_interpolate(points_coords: torch.Tensor, centers_coords: torch.Tensor,
                                 centers_features: torch.Tensor):
    """Interpolates the centres' features at the points.

    Args:
        points_coords: [B, 3, N].
        centers_coords: [B, 3, M].
        centers_features: [B, C, M].

    Returns:
        (out [B, C, N] in centers_features' dtype, indices [B, 3, N] int32, weights [B, 3, N]).

    Example:
        >>> centers = torch.tensor([[[0.0, 1.0, 4.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        >>> out, idx, w = nearest_neighbor_interpolate(torch.full((1, 3, 1), 0.0), centers,
        ...                                            torch.tensor([[[1.0, 2.0, 3.0]]]))
        >>> out.tolist(), idx[0, :, 0].tolist()
        ([[[1.0]]], [0, 1, 2])
    """
    B, C, M = centers_features.shape
    N = points_coords.shape[2]
    dtype = centers_features.dtype
    if M == 0 or N == 0:
        zeros = centers_features.new_zeros(B, 3, N)
        return (centers_features.new_zeros(B, C, N) + centers_features.sum() * 0, zeros.int(), zeros)
    with torch.no_grad():
        d2 = dist2(points_coords.detach(), centers_coords.detach())  # [B, N, M]
        d, idx = d2.sort(dim=-1, stable=True)
        d, idx = d[..., :3], idx[..., :3]
        if M < 3:
            d = torch.cat([d, d.new_full((B, N, 3 - M), float("inf"))], dim=-1)
            idx = torch.cat([idx, idx.new_zeros(B, N, 3 - M)], dim=-1)
        d = d.clamp(1e-10, 1e10)
        d0, d1, d2_ = d.unbind(-1)
        d01, d02, d12 = d0 * d1, d0 * d2_, d1 * d2_
        inv = 1 / (d01 + d02 + d12)
        w = torch.stack([d12 * inv, d02 * inv, d01 * inv], dim=1).to(dtype)  # [B, 3, N]
        idx = idx.transpose(1, 2).contiguous()  # [B, 3, N]
    out = None
    for k in range(3):
        term = w[:, k:k + 1] * centers_features.gather(2, idx[:, k:k + 1].expand(B, C, N))
        out = term if out is None else out + term
    return out, idx.int(), w


def nearest_neighbor_interpolate_fwd(points_coords, centers_coords, centers_features, deterministic):
    """``nearest_neighbor_interpolate`` with the kernels' arguments."""
    return nearest_neighbor_interpolate(points_coords, centers_coords, centers_features)
