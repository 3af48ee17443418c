"""PVCNN's ``gather`` and ``grouping``: point features at point indices.

Kernels (``pyengine.reference.grouping``, ``pyengine._C``): ``gather_fwd(features, indices,
deterministic)`` with ``indices`` [B, M] int32 and ``grouping_fwd`` with [B, M, K] indices, each with
its ``_bwd``.

Determinism: the backward adds the gradients of every output that reads a point. It is
bit-identical from run to run on the CPU kernel always, and on CUDA when ``deterministic`` is
true, where it is a sorted-segment reduction instead of atomics (see csrc/include/pyengine/
grouping.h). ``deterministic=None`` follows ``torch.are_deterministic_algorithms_enabled()`` or
``PYENGINE_DETERMINISTIC=1``.
"""

from __future__ import annotations

import torch

from pyengine.ops import _checked
from pyengine.ops._define import FLOAT, INDEX, T, check, define
from pyengine.ops.furthest_point_sample import compute_dtype
from pyengine.ops.voxelize import _deterministic
from pyengine.reference import grouping as _ref

__all__ = ["gather", "grouping"]

GATHER_OP = define("gather", "(Tensor features, Tensor indices, bool deterministic) -> Tensor", grads=("features",),
                   fake=lambda f, i, d: f.new_empty(f.shape[0], f.shape[1], i.shape[1]),
                   reference=_ref, cpu=True, cuda=True)

GROUPING_OP = define("grouping", "(Tensor features, Tensor indices, bool deterministic) -> Tensor",
                     grads=("features",), fake=lambda f, i, d: f.new_empty(f.shape[0], f.shape[1], *i.shape[1:]),
                     reference=_ref, cpu=True, cuda=True)


def check_indices(op: str, name: str, indices: torch.Tensor, n: int) -> None:
    """Raises ValueError unless every index lies in [0, n). One device sync, none for unchanged
    indices that passed or that ``ball_query`` / ``furthest_point_sample`` made (``_checked``)."""
    if indices.numel() == 0 or _checked.passed(indices, ("indices", n)):
        return
    bad = (indices < 0) | (indices >= n)
    if bool(bad.any()):
        pos = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{op}: {name} must lie in [0, N) = [0, {n}); {name}[{', '.join(map(str, pos))}] = "
                         f"{int(indices[pos])} (pass validate=False to clamp into [0, N - 1])")
    _checked.mark(indices, ("indices", n))


def _indices(op: str, indices: torch.Tensor, n: int, validate: bool) -> torch.Tensor:
    if validate:
        check_indices(op, "indices", indices, n)
    elif indices.dtype == torch.int64:
        indices = indices.clamp(0, max(n - 1, 0))  # before the cast to int32 can wrap
    return indices.to(torch.int32).contiguous()


def gather(features: torch.Tensor, indices: torch.Tensor, *, deterministic: bool | None = None,
           backend: str | None = None, validate: bool = True) -> torch.Tensor:
    """Features at point indices (PVCNN's ``gather``): ``out[b, c, m] = features[b, c, indices[b, m]]``.

    Args:
        features: [B, C, N] float16 / bfloat16 / float32 / float64 (the backward sums in float32,
            float64 in float64).
        indices: [B, M] int32 / int64 in [0, N) (e.g. from ``furthest_point_sample``); checked
            unless ``validate=False``, then clamped into [0, N - 1] (all outputs 0 when N = 0).
        deterministic: bit-identical gradients from run to run on CUDA (sorted segments instead of
            atomics); None: ``torch.are_deterministic_algorithms_enabled()`` or
            ``PYENGINE_DETERMINISTIC=1``. The CPU kernel always is.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).
        validate: check the indices' range (one device sync).

    Returns:
        [B, C, M] in features' dtype, differentiable w.r.t. features.

    Example:
        >>> gather(torch.tensor([[[10.0, 11.0, 12.0]]]), torch.tensor([[2, 0, 2]])).tolist()
        [[[12.0, 10.0, 12.0]]]
    """
    sizes = check("gather", {"features": T(FLOAT, "B C N"), "indices": T(INDEX, "B M")},
                  {"features": features, "indices": indices})
    idx = _indices("gather", indices, sizes["N"], validate)
    out = GATHER_OP(features.to(compute_dtype(features)).contiguous(), idx, _deterministic(deterministic),
                    backend=backend)
    return out.to(features.dtype)


def grouping(features: torch.Tensor, indices: torch.Tensor, *, deterministic: bool | None = None,
             backend: str | None = None, validate: bool = True) -> torch.Tensor:
    """Features of each centre's neighbours (PVCNN's ``grouping``):
    ``out[b, c, m, k] = features[b, c, indices[b, m, k]]``.

    Args:
        features: [B, C, N] float16 / bfloat16 / float32 / float64 (the backward sums in float32,
            float64 in float64).
        indices: [B, M, K] int32 / int64 in [0, N) (e.g. from ``ball_query``); checked unless
            ``validate=False``, then clamped into [0, N - 1] (all outputs 0 when N = 0).
        deterministic: as in ``gather``.
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).
        validate: check the indices' range (one device sync).

    Returns:
        [B, C, M, K] in features' dtype, differentiable w.r.t. features.

    Example:
        >>> grouping(torch.tensor([[[10.0, 11.0, 12.0]]]), torch.tensor([[[2, 0], [1, 1]]])).tolist()
        [[[[12.0, 10.0], [11.0, 11.0]]]]
    """
    sizes = check("grouping", {"features": T(FLOAT, "B C N"), "indices": T(INDEX, "B M K")},
                  {"features": features, "indices": indices})
    idx = _indices("grouping", indices, sizes["N"], validate)
    out = GROUPING_OP(features.to(compute_dtype(features)).contiguous(), idx, _deterministic(deterministic),
                      backend=backend)
    return out.to(features.dtype)
