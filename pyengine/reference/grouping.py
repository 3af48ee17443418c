"""Pure-PyTorch ``gather`` and ``grouping``, their specification (PVCNN's).

``gather``: ``out[b, c, m] = features[b, c, indices[b, m]]``; ``grouping``: the same with
``[B, M, K]`` indices, ``out[b, c, m, k] = features[b, c, indices[b, m, k]]``. Indices are clamped
into ``[0, N - 1]`` (the public functions reject out-of-range ones unless told not to check);
with ``N = 0`` every output is 0. Differentiable w.r.t. the features: the gradient adds the
upstream gradients of every output that reads a point.
"""

from __future__ import annotations

import torch

__all__ = ["gather", "gather_fwd", "grouping", "grouping_fwd"]


def gather(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Features at indices.

    Args:
        features: [B, C, N].
        indices: [B, M] integer point indices.

    Returns:
        [B, C, M] in features' dtype.

    Example:
        >>> gather(torch.tensor([[[10.0, 11.0, 12.0]]]), torch.tensor([[2, 0, 2]])).tolist()
        [[[12.0, 10.0, 12.0]]]
    """
    B, C, N = features.shape
    M = indices.shape[1]
    if N == 0:
        return features.new_zeros(B, C, M) + features.sum() * 0  # keeps the graph for autograd
    idx = indices.long().clamp(0, N - 1)
    return features.gather(2, idx[:, None].expand(B, C, M))


def gather_fwd(features, indices, deterministic):
    """``gather`` with the kernels' arguments (``deterministic`` changes nothing here)."""
    return gather(features, indices)


def grouping(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Features of each centre's neighbours.

    Args:
        features: [B, C, N].
        indices: [B, M, K] integer point indices (e.g. from ``ball_query``).

    Returns:
        [B, C, M, K] in features' dtype.

    Example:
        >>> grouping(torch.tensor([[[10.0, 11.0, 12.0]]]), torch.tensor([[[2, 0], [1, 1]]])).tolist()
        [[[[12.0, 10.0], [11.0, 11.0]]]]
    """
    B, C, _ = features.shape
    _, M, K = indices.shape
    return gather(features, indices.reshape(B, M * K)).reshape(B, C, M, K)


def grouping_fwd(features, indices, deterministic):
    """``grouping`` with the kernels' arguments."""
    return grouping(features, indices)
