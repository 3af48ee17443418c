"""``composite``: volume-rendering compositing over packed samples (nerfacc's maths), with backward.

``composite()`` checks its inputs (packed_info's values too, unless ``validate=False``, once per
unchanged packed_info: ``_checked``) and runs
the op defined below. Kernels (``pyengine.reference.composite``, ``pyengine._C``,
``pyengine.kernels.composite``): ``composite_fwd(packed_info, t_starts, t_ends, x, values,
alpha_mode)`` where x is the densities (``alpha_mode`` false) or the alphas and ``values`` is
``[S, C]`` (C = 0 when there is nothing to accumulate); ``composite_bwd`` reads the forward's
transmittance. ``pack_info()`` builds packed_info from sorted ray indices.
"""

from __future__ import annotations

import torch

from pyengine.ops import _checked
from pyengine.ops._define import FLOAT, INDEX, T, check, define
from pyengine.reference import composite as _ref
from pyengine.reference.composite import CompositeResult

__all__ = ["CompositeResult", "composite", "pack_info"]


def _fake(packed_info, t_starts, t_ends, x, values, alpha_mode):
    S, R, C = t_starts.shape[0], packed_info.shape[0], values.shape[1]
    new = t_starts.new_empty
    return new(S), new(S), new(S), new(R, C), new(R), new(R)


# On GPUs Triton comes first. On an H200 (bench/RESULTS.md, commit ba6b52e), C = 3, about 64
# samples per ray, forward + backward kernels alone took 0.180 ms with Triton's [rays x samples]
# tiles against 0.225 ms with the one-thread-per-ray CUDA kernels at 2^20 samples, and 0.417
# against 1.164 ms at 2^22. The CUDA kernels have since become group-per-ray scans (coalesced, warp
# shuffles: csrc/cuda/composite.cu), not yet run on a GPU: the order stays until they are timed.
OP = define(
    "composite",
    "(Tensor packed_info, Tensor t_starts, Tensor t_ends, Tensor x, Tensor values, bool alpha_mode)"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    grads=("x", "values"), save=(1,), fake=_fake, reference=_ref, cpu=True, cuda=True,
    triton="pyengine.kernels.composite", gpu_order=("triton", "cuda", "reference"))

SPECS = {"packed_info": T(INDEX, "R 2"), "t_starts": T(FLOAT, "S"), "t_ends": T(FLOAT, "S"),
         "x": T(FLOAT, "S"), "values": T(FLOAT, "S C", optional=True)}


def check_packed_info(packed_info: torch.Tensor, n_samples: int) -> None:
    """Raises ValueError unless every ray's range [start, start + count) lies in [0, n_samples)
    and no two non-empty ranges overlap. One device synchronisation (two for rays out of order)."""
    if packed_info.shape[0] == 0:
        return
    starts, counts = packed_info[:, 0].long(), packed_info[:, 1].long()
    ends = starts + counts
    nonempty = counts > 0
    # rays in packed order: each non-empty ray starts at or after every earlier ray's end
    end_so_far = torch.cummax(torch.where(nonempty, ends, 0), 0).values
    in_order = (starts[1:] >= end_so_far[:-1]) | ~nonempty[1:]
    flags = torch.stack([(counts < 0).any(), (starts < 0).any(), (ends > n_samples).any(),
                         ~in_order.all()]).tolist()

    def first(mask):
        return int(torch.nonzero(mask)[0, 0])

    if flags[0]:
        r = first(counts < 0)
        raise ValueError(f"composite: packed_info counts must be >= 0; ray {r} has count {int(counts[r])}")
    if flags[1]:
        r = first(starts < 0)
        raise ValueError(f"composite: packed_info starts must be >= 0; ray {r} starts at {int(starts[r])}")
    if flags[2]:
        r = first(ends > n_samples)
        raise ValueError(f"composite: packed_info ray {r} covers samples [{int(starts[r])}, {int(ends[r])}), "
                         f"beyond the {n_samples} samples of t_starts")
    if flags[3]:
        # out of packed order: sort the non-empty ranges by start and look for an overlap
        key = torch.where(nonempty, starts, n_samples)
        order = torch.argsort(key)
        ks, es = key[order], torch.where(nonempty, ends, n_samples)[order]
        bad = ks[1:] < es[:-1]
        if bad.any():
            i = first(bad)
            a, b = int(order[i]), int(order[i + 1])
            raise ValueError(f"composite: packed_info ranges must not overlap; ray {a} covers "
                             f"[{int(starts[a])}, {int(ends[a])}) and ray {b} starts at {int(starts[b])}")


def composite(packed_info: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
              densities: torch.Tensor | None = None, alphas: torch.Tensor | None = None,
              values: torch.Tensor | None = None, *, backend: str | None = None,
              validate: bool = True) -> CompositeResult:
    """Volume-rendering weights of packed samples and their per-ray sums (nerfacc's maths).

    Ray ``r`` owns the samples ``[start_r, start_r + count_r)``, ``packed_info[r] = (start_r,
    count_r)`` (see ``pack_info``). Within a ray: density mode ``tau_i = sigma_i (t_end_i -
    t_start_i)``, ``alpha_i = 1 - exp(-tau_i)``, ``T_i = exp(-sum_{j<i} tau_j)``; alpha mode
    ``T_i = prod_{j<i} (1 - alpha_j)``; ``w_i = T_i alpha_i``. Per ray, ``accumulated = sum_i w_i
    values_i``, ``opacity = sum_i w_i``, ``depth = sum_i w_i (t_start_i + t_end_i) / 2`` (not
    divided by the opacity). Samples that no ray covers get weight and alpha 0, transmittance 1.

    Args:
        packed_info: [R, 2] int32 / int64 (start, count) per ray; ranges inside [0, S), not
            overlapping (checked unless ``validate=False``).
        t_starts, t_ends: [S] sample intervals along the rays.
        densities: [S] sigma >= 0 (density mode), or None.
        alphas: [S] in [0, 1] (alpha mode), or None. Exactly one of densities and alphas.
        values: [S, C] values to accumulate (colours, features), or None (``accumulated`` is
            then [R, 0]).
        backend: "cuda", "triton", "cpu" or "reference"; default: automatic (see ``_dispatch``).
        validate: check packed_info's values (``check_packed_info``). The check synchronises
            with the device, which on a GPU costs more than the kernels at 2^20 samples, so it
            runs once per packed_info: a tensor that passed, or that ``pack_info`` or
            ``ray_march`` made, is not checked again until it is written in place. Unchecked,
            ranges outside [0, S) are clamped by the kernels and overlapping ranges give
            undefined outputs.

    Returns:
        ``CompositeResult(weights [S], transmittance [S], alphas [S], accumulated [R, C],
        opacity [R], depth [R])``, in float64 if any floating input is float64, else float32.
        Differentiable w.r.t. densities / alphas and values (not t_starts / t_ends), from the
        gradients of all six outputs.

    Example:
        >>> ray_indices = torch.tensor([0, 0, 0, 2, 2])
        >>> packed_info = pack_info(ray_indices, n_rays=3)
        >>> t0 = torch.tensor([0.0, 0.1, 0.2, 0.0, 0.5]); t1 = t0 + 0.1
        >>> out = composite(packed_info, t0, t1, densities=torch.full((5,), 10.0), values=torch.rand(5, 3))
        >>> out.accumulated.shape, out.opacity.shape
        (torch.Size([3, 3]), torch.Size([3]))
    """
    if (densities is None) == (alphas is None):
        which = "both" if densities is not None else "neither"
        raise ValueError(f"composite: pass exactly one of densities and alphas, got {which}")
    alpha_mode = alphas is not None
    x = alphas if alpha_mode else densities
    specs = dict(SPECS)
    specs[("alphas" if alpha_mode else "densities")] = specs.pop("x")
    check("composite", specs, {"packed_info": packed_info, "t_starts": t_starts, "t_ends": t_ends,
                               "densities": densities, "alphas": alphas, "values": values})
    if validate and not _checked.passed(packed_info, ("packed_info", t_starts.shape[0])):
        check_packed_info(packed_info, t_starts.shape[0])
        _checked.mark(packed_info, ("packed_info", t_starts.shape[0]))
    floats = [t_starts, t_ends, x] + ([values] if values is not None else [])
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in floats) else torch.float32
    v = values if values is not None else t_starts.new_empty(t_starts.shape[0], 0)
    out = OP(packed_info.to(torch.int64).contiguous(), t_starts.to(dtype).contiguous(),
             t_ends.to(dtype).contiguous(), x.to(dtype).contiguous(), v.to(dtype).contiguous(), alpha_mode,
             backend=backend)
    return CompositeResult(*out)


def pack_info(ray_indices: torch.Tensor, n_rays: int, *, validate: bool = True) -> torch.Tensor:
    """packed_info [n_rays, 2] (start, count) of samples sorted by ray.

    Args:
        ray_indices: [S] int, the ray of each sample, non-decreasing, in [0, n_rays).
        n_rays: R, the number of rays (rays without samples get count 0).
        validate: check that ray_indices are sorted and in range, which reads one small result
            back from the device; once per unchanged tensor, and never for ``ray_march``'s.

    Returns:
        [R, 2] int64 on ray_indices' device: ``count_r`` = number of samples of ray r and
        ``start_r`` = the exclusive cumulative sum of the counts.

    Example:
        >>> pack_info(torch.tensor([0, 0, 2, 2, 2]), n_rays=4)
        tensor([[0, 2],
                [2, 0],
                [2, 3],
                [5, 0]])
    """
    if not isinstance(ray_indices, torch.Tensor):
        raise TypeError(f"pack_info: ray_indices must be a torch.Tensor, got {type(ray_indices).__name__}")
    if ray_indices.dtype not in (torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"pack_info: ray_indices must be an integer tensor, got {ray_indices.dtype}")
    if ray_indices.dim() != 1:
        raise ValueError(f"pack_info: ray_indices must be [S], got shape {tuple(ray_indices.shape)}")
    if isinstance(n_rays, bool) or not isinstance(n_rays, int) or n_rays < 0:
        raise ValueError(f"pack_info: n_rays must be an int >= 0, got {n_rays!r}")
    idx = ray_indices.long()
    if validate and idx.numel() > 0 and not _checked.passed(ray_indices, ("ray_indices", n_rays)):
        unsorted = idx[1:] < idx[:-1]
        lo, hi, bad = torch.stack([idx.min(), idx.max(), unsorted.any().long()]).tolist()
        if bad:
            i = int(torch.nonzero(unsorted)[0, 0])
            raise ValueError(f"pack_info: ray_indices must be sorted (non-decreasing); "
                             f"ray_indices[{i}] = {int(idx[i])} > ray_indices[{i + 1}] = {int(idx[i + 1])}")
        if lo < 0 or hi >= n_rays:
            raise ValueError(f"pack_info: ray_indices must lie in [0, n_rays) = [0, {n_rays}), "
                             f"got values in [{lo}, {hi}]")
        _checked.mark(ray_indices, ("ray_indices", n_rays))
    # index_add rather than bincount: bincount reads the largest index back to size its output
    counts = torch.zeros(n_rays, dtype=torch.int64, device=idx.device).index_add_(0, idx, torch.ones_like(idx))
    packed_info = torch.stack([torch.cumsum(counts, 0) - counts, counts], -1)
    _checked.mark(packed_info, ("packed_info", idx.numel()))  # in order, inside [0, S): valid by construction
    return packed_info
