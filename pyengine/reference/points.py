"""Shared by the point-op references: squared distances rounded as the kernels round them."""

from __future__ import annotations

import torch


def dist2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances ``dx * dx + dy * dy + dz * dz`` (a minus b), each operation rounded once,
    left to right, as the kernels compute them (pyengine/points.h).

    Args:
        a: [B, 3, P] coordinates.
        b: [B, 3, Q] coordinates.

    Returns:
        [B, P, Q].
    """
    d = a[:, :, :, None] - b[:, :, None, :]
    sq = d * d
    return sq[:, 0] + sq[:, 1] + sq[:, 2]
