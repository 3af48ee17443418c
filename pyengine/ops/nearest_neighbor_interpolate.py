"""``nearest_neighbor_interpolate``: PVCNN's three-nearest-neighbour feature interpolation.

Kernels (``pyengine.reference.nearest_neighbor_interpolate``, ``pyengine._C``):
``nearest_neighbor_interpolate_fwd(points_coords, centers_coords, centers_features,
deterministic) -> (out, indices, weights)`` and its ``_bwd``, which reads the saved indices and
weights. The neighbour indices are the same on every backend (distances rounded the same way,
ties to the lower index).

Determinism: the backward adds every point's weighted gradient into its three centres. It is
bit-identical from run to run on the CPU kernel always, and on CUDA when ``deterministic`` is
true (sorted segments instead of atomics, see csrc/include/pyengine/nearest_neighbor_interpolate.h);
``deterministic=None`` follows ``torch.are_deterministic_algorithms_enabled()`` or
``PYENGINE_DETERMINISTIC=1``.
"""

from __future__ import annotations

import torch

from pyengine.ops._define import FLOAT, T, check, define
from pyengine.ops.furthest_point_sample import compute_dtype
from pyengine.ops.voxelize import _deterministic
from pyengine.reference import nearest_neighbor_interpolate as _ref

__all__ = ["nearest_neighbor_interpolate"]


def _fake(points_coords, centers_coords, centers_features, deterministic):
    B, C, _ = centers_features.shape
    N = points_coords.shape[2]
    return (centers_features.new_empty(B, C, N), centers_features.new_empty(B, 3, N, dtype=torch.int32),
            centers_features.new_empty(B, 3, N))


OP = define("nearest_neighbor_interpolate", "(Tensor points_coords, Tensor centers_coords, Tensor centers_features, "
            "bool deterministic) -> (Tensor, Tensor, Tensor)", grads=("centers_features",), save=(1, 2), fake=_fake,
            reference=_ref, cpu=True, cuda=True)


def nearest_neighbor_interpolate(points_coords: torch.Tensor, centers_coords: torch.Tensor,
                                 centers_features: torch.Tensor, *, return_indices: bool = False,
                                 deterministic: bool | None = None, backend: str | None = None):
    """Features at the points, interpolated from their three nearest centres (PVCNN's formula).

    With the squared distances ``d0 <= d1 <= d2`` of a point's three nearest centres (equally near
    ones in index order), each clamped into [1e-10, 1e10], the weights are the normalised inverse
    squared distances ``w_k = (1 / d_k) / sum_j (1 / d_j)``, computed as PVCNN does
    (``w0 = d1 d2 / (d0 d1 + d0 d2 + d1 d2)``, ...). With fewer than three centres the missing
    ones count as centre 0 at distance 1e10 (weight about 0); with no centre (M = 0) the output is 0.

    Args:
        points_coords: [B, 3, N] floating.
        centers_coords: [B, 3, M] floating.
        centers_features: [B, C, M] float16 / bfloat16 / float32 / float64; everything is computed
            in float32, or float64 for float64 features (the coordinates are cast to it).
        return_indices: also return ``indices`` [B, 3, N] int32 and ``weights`` [B, 3, N].
        deterministic: bit-identical gradients from run to run on CUDA (sorted segments instead of
            atomics); None: ``torch.are_deterministic_algorithms_enabled()`` or
            ``PYENGINE_DETERMINISTIC=1``. The CPU kernel always is.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        [B, C, N] in centers_features' dtype, or ``(out, indices, weights)`` with
        ``return_indices``. Differentiable w.r.t. centers_features (not the coordinates, as PVCNN).

    Example:
        >>> centers = torch.tensor([[[0.0, 1.0, 4.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        >>> out = nearest_neighbor_interpolate(torch.zeros(1, 3, 1), centers, torch.tensor([[[1.0, 2.0, 3.0]]]))
        >>> out.tolist()
        [[[1.0]]]
    """
    check("nearest_neighbor_interpolate", {"points_coords": T(FLOAT, "B 3 N"), "centers_coords": T(FLOAT, "B 3 M"),
                                           "centers_features": T(FLOAT, "B C M")},
          {"points_coords": points_coords, "centers_coords": centers_coords, "centers_features": centers_features})
    dtype = compute_dtype(centers_features)
    out, idx, w = OP(points_coords.detach().to(dtype).contiguous(), centers_coords.detach().to(dtype).contiguous(),
                     centers_features.to(dtype).contiguous(), _deterministic(deterministic), backend=backend)
    out = out.to(centers_features.dtype)
    return (out, idx, w) if return_indices else out
