"""``furthest_point_sample``: PVCNN's furthest point sampling, returning the sample indices.

Kernels (``pyengine.reference.furthest_point_sample``, ``pyengine._C``):
``furthest_point_sample(coords, num_samples) -> [B, M] int32``. Every backend returns the same
indices: the distances are rounded the same way (pyengine/points.h) and ties go to the lowest
index. The CUDA kernel's per-step maximum is an integer atomicMax, exact in any order, so it is
deterministic without a flag.
"""

from __future__ import annotations

import torch

from pyengine.ops import _checked
from pyengine.ops._define import FLOAT, T, check, define
from pyengine.reference import furthest_point_sample as _ref

__all__ = ["furthest_point_sample"]

OP = define("furthest_point_sample", "(Tensor coords, int num_samples) -> Tensor",
            fake=lambda coords, m: coords.new_empty(coords.shape[0], m, dtype=torch.int32),
            reference=_ref, cpu=True, cuda=True)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any of the tensors is, else float32 (float16 / bfloat16 compute in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_count(op: str, name: str, value, low: int, high: int | None = None) -> int:
    """Raises ValueError unless ``value`` is an int in [low, high]."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{op}: {name} must be an int {bound}, got {value!r}")
    return value


@torch.no_grad()
def furthest_point_sample(coords: torch.Tensor, num_samples: int, *, backend: str | None = None) -> torch.Tensor:
    """Indices of ``num_samples`` points per cloud by iterative furthest point sampling.

    PVCNN's algorithm: sample 0 is point 0; each further sample is the point whose squared
    distance to its nearest sample so far is largest, the lowest index among equally far points.
    PVCNN's ``furthest_point_sample`` returns the sampled coordinates; here they are
    ``gather(coords, furthest_point_sample(coords, M))``.

    Args:
        coords: [B, 3, N] float16 / bfloat16 / float32 / float64 (distances in float32, float64 in
            float64).
        num_samples: M in [0, N].
        backend: "cuda", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        [B, M] int32 point indices, ``[:, 0] == 0``. Not differentiable.

    Example:
        >>> coords = torch.tensor([[[0.0, 1.0, 5.0, 2.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
        >>> furthest_point_sample(coords, 3).tolist()
        [[0, 2, 3]]
    """
    sizes = check("furthest_point_sample", {"coords": T(FLOAT, "B 3 N")}, {"coords": coords})
    check_count("furthest_point_sample", "num_samples", num_samples, 0, sizes["N"])
    out = OP(coords.to(compute_dtype(coords)).contiguous(), num_samples, backend=backend)
    _checked.mark(out, ("indices", sizes["N"]))  # points of coords: what gather and grouping check
    return out
