"""Pure-PyTorch volume-rendering compositing over packed samples, the specification of ``composite``.

The maths is nerfacc's (``render_weight_from_density`` / ``render_weight_from_alpha`` followed by
``accumulate_along_rays``). Samples are packed ray after ray; ray ``r`` owns the samples
``[start_r, start_r + count_r)`` with ``packed_info[r] = (start_r, count_r)``. Within one ray,
with ``i`` running over its samples in order:

* density mode: ``tau_i = sigma_i (t_end_i - t_start_i)``, ``alpha_i = 1 - exp(-tau_i)``,
  ``T_i = exp(-sum_{j<i} tau_j)`` (exclusive: the first sample of a ray has ``T = 1``);
* alpha mode: ``T_i = prod_{j<i} (1 - alpha_j)``;
* ``w_i = T_i alpha_i``, and per ray ``accumulated = sum_i w_i values_i``,
  ``opacity = sum_i w_i``, ``depth = sum_i w_i (t_start_i + t_end_i) / 2`` (not divided by the
  opacity).

A sample that no ray covers gets ``weight = alpha = 0`` and ``transmittance = 1``, and no
gradient. Ray ranges must not overlap. Densities are expected to be >= 0 and alphas in
``[0, 1]``; neither is clamped.

Method: the rays are laid out as a padded ``[R, max_count]`` matrix, so that the per-ray scans are
plain ``cumsum`` / ``cumprod`` along dim 1 (memory ``O(R * max_count)``; the kernels need none).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["CompositeResult", "composite", "composite_fwd"]


class CompositeResult(NamedTuple):
    """Outputs of ``composite``; S samples, R rays, C value channels."""

    weights: torch.Tensor  # [S]
    transmittance: torch.Tensor  # [S]
    alphas: torch.Tensor  # [S]
    accumulated: torch.Tensor  # [R, C]
    opacity: torch.Tensor  # [R]
    depth: torch.Tensor  # [R]


def _padded_index(packed_info: torch.Tensor):
    """([R, n_max] index of the j-th sample of ray r, 0 on padding; [R, n_max] bool mask)."""
    starts, counts = packed_info[:, 0].long(), packed_info[:, 1].long()
    n_max = int(counts.max()) if counts.numel() else 0
    j = torch.arange(n_max, device=packed_info.device)
    mask = j[None, :] < counts[:, None]
    return torch.where(mask, starts[:, None] + j[None, :], 0), mask


def _gather(x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x[index] with zeros on padding ([R, n_max] or [R, n_max, C])."""
    out = x.index_select(0, index.reshape(-1)).reshape(*index.shape, *x.shape[1:])
    m = mask if out.dim() == 2 else mask[..., None]
    return torch.where(m, out, torch.zeros((), dtype=x.dtype, device=x.device))


def _scatter(pad: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, n: int, fill: float) -> torch.Tensor:
    """The inverse of _gather: [n] holding pad's valid entries, ``fill`` elsewhere."""
    out = torch.full((n,), fill, dtype=pad.dtype, device=pad.device)
    return out.index_put((index[mask],), pad[mask])


def _exclusive(scan: torch.Tensor, first: float) -> torch.Tensor:
    """Exclusive scan along dim 1 from an inclusive one: [first, scan_0, ..., scan_{n-2}]."""
    return torch.cat([torch.full_like(scan[:, :1], first), scan[:, :-1]], 1)


def composite(packed_info: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
              densities: torch.Tensor | None = None, alphas: torch.Tensor | None = None,
              values: torch.Tensor | None = None) -> CompositeResult:
    """Volume-rendering weights and per-ray sums, plain PyTorch (differentiable by autograd).

    Args:
        packed_info: [R, 2] integer (start, count) of each ray's samples.
        t_starts, t_ends: [S] sample interval bounds along the ray.
        densities: [S] sigma (density mode), or None.
        alphas: [S] opacity of each sample (alpha mode), or None. Exactly one of the two.
        values: [S, C] per-sample values to accumulate (e.g. colours), or None (C = 0).

    Returns:
        ``CompositeResult(weights [S], transmittance [S], alphas [S], accumulated [R, C],
        opacity [R], depth [R])`` in the promoted floating dtype of the inputs.

    Example:
        >>> packed_info = torch.tensor([[0, 2], [2, 0], [2, 1]])
        >>> out = composite(packed_info, torch.zeros(3), torch.ones(3), alphas=torch.tensor([0.5, 0.5, 0.2]))
        >>> out.weights
        tensor([0.5000, 0.2500, 0.2000])
        >>> out.opacity
        tensor([0.7500, 0.0000, 0.2000])
    """
    if (densities is None) == (alphas is None):
        raise ValueError("composite: pass exactly one of densities and alphas")
    x = densities if densities is not None else alphas
    dtype = torch.promote_types(torch.promote_types(t_starts.dtype, t_ends.dtype), x.dtype)
    if values is not None:
        dtype = torch.promote_types(dtype, values.dtype)
    S = t_starts.shape[0]
    t0, t1, x = t_starts.to(dtype), t_ends.to(dtype), x.to(dtype)
    v = values.to(dtype) if values is not None else x.new_zeros(S, 0)

    index, mask = _padded_index(packed_info)
    t0p, t1p, xp = _gather(t0, index, mask), _gather(t1, index, mask), _gather(x, index, mask)
    if densities is not None:
        tau = xp * (t1p - t0p)
        alpha = -torch.expm1(-tau)  # 1 - exp(-tau), accurate for small tau
        trans = torch.exp(-_exclusive(torch.cumsum(tau, 1), 0.0))
    else:
        alpha = xp
        trans = _exclusive(torch.cumprod(1 - alpha, 1), 1.0)
    w = trans * alpha  # zero on padding, where alpha is zero

    accumulated = (w[..., None] * _gather(v, index, mask)).sum(1)
    opacity = w.sum(1)
    depth = (w * (t0p + t1p) * 0.5).sum(1)
    return CompositeResult(
        weights=_scatter(w, index, mask, S, 0.0),
        transmittance=_scatter(trans, index, mask, S, 1.0),
        alphas=_scatter(alpha, index, mask, S, 0.0),
        accumulated=accumulated,
        opacity=opacity,
        depth=depth,
    )


def composite_fwd(packed_info, t_starts, t_ends, x, values, alpha_mode):
    """``composite`` with the kernels' arguments: x is the densities or (alpha_mode) the alphas."""
    dens, alph = (None, x) if alpha_mode else (x, None)
    return tuple(composite(packed_info, t_starts, t_ends, dens, alph, values))
