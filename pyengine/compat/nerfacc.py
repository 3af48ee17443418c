"""Drop-in for nerfacc 0.5 (``import nerfacc``) on pyengine's ops, on any device.

Mirrors nerfacc 0.5.3's public names, argument order, defaults and return values:

* volume rendering (``nerfacc.volrend``): ``render_weight_from_density``,
  ``render_weight_from_alpha``, ``render_transmittance_from_density``,
  ``render_transmittance_from_alpha``, ``render_visibility_from_density``,
  ``render_visibility_from_alpha``, ``accumulate_along_rays`` (and the in-place
  ``accumulate_along_rays_``), ``rendering``;
* ``OccGridEstimator`` (``nerfacc.estimators.occ_grid``), ``ray_aabb_intersect`` (``nerfacc.grid``),
  ``pack_info`` (``nerfacc.pack``), ``inclusive_sum``, ``exclusive_sum``, ``inclusive_prod``,
  ``exclusive_prod`` (``nerfacc.scan``).

Weights, transmittance and alphas come from one call of the fused op ``pyengine.ops.composite``
(CUDA, Triton, C++/OpenMP or PyTorch); ``rendering`` gets colours, opacities and depths from that
same call. Samples come packed (``[S]`` with ``packed_info [R, 2]`` (start, count) or sorted
``ray_indices [S]``) or batched (``[..., n_samples]``, no ``packed_info`` nor ``ray_indices``),
as in nerfacc; batched inputs are packed (every ray has ``n_samples`` samples) and the outputs
reshaped back.

Where pyengine differs from nerfacc on purpose:

* **Errors.** Bad input raises ``ValueError`` / ``TypeError`` naming the argument where nerfacc
  asserts or fails inside CUDA: mismatched shapes, ``ray_indices`` out of order or out of
  ``[0, n_rays)``, overlapping or out-of-range ``packed_info``. As in nerfacc, ``n_rays = None``
  with ``ray_indices`` means ``ray_indices.max() + 1`` in the ``render_*`` functions, and is an
  error in ``accumulate_along_rays`` and ``rendering``.
* **Precision.** The fused op computes in float32 (float64 if an input is float64); outputs are
  cast to the inputs' promoted dtype. Density mode uses ``1 - exp(-tau)`` via ``expm1``.
* **Gradients** reach sigmas / alphas, values, ``prefix_trans`` and ``render_bkgd``, and also
  ``t_starts`` / ``t_ends`` when they require grad (nerfacc's ``rendering`` documents it is not
  differentiable there, its functions are in practice; so are these).
* ``rendering`` accepts any number of value channels (nerfacc asserts 3), and the keyword
  ``expected_depths=True`` of nerfacc's master branch (``False`` returns ``sum w t_mid`` without
  dividing by the opacity; nerfacc 0.5.3 always divides).
* Packed samples that no ray of ``packed_info`` covers get weight and alpha 0 and
  transmittance 1 (nerfacc leaves them undefined).
* Not provided: ``traverse_grids``, ``importance_sampling``, ``searchsorted``, ``RayIntervals``,
  ``RaySamples``, ``PropNetEstimator``, ``OccGridEstimator.sampling``'s exact step lattice (see
  ``pyengine.nn.occupancy_grid.OccupancyGrid.sampling`` for the differences, all within a step).
  Accessing them raises ``AttributeError`` saying so.

Example:
    >>> from pyengine.compat import nerfacc
    >>> t_starts = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]); t_ends = t_starts + 1
    >>> sigmas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
    >>> ray_indices = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    >>> weights, trans, alphas = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas,
    ...                                                              ray_indices=ray_indices)
    >>> [round(w, 2) for w in weights.tolist()]
    [0.33, 0.37, 0.03, 0.55, 0.04, 0.0, 0.59]
"""

from __future__ import annotations

import functools
import operator
import sys
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from pyengine.nn.occupancy_grid import OccupancyGrid
from pyengine.ops.composite import CompositeResult, composite
from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect
from pyengine.ops.segment_scan import segment_scan

__version__ = "0.5.3"  # the nerfacc release whose API this module follows

__all__ = [
    "OccGridEstimator",
    "__version__",
    "accumulate_along_rays",
    "accumulate_along_rays_",
    "exclusive_prod",
    "exclusive_sum",
    "inclusive_prod",
    "inclusive_sum",
    "pack_info",
    "ray_aabb_intersect",
    "render_transmittance_from_alpha",
    "render_transmittance_from_density",
    "render_visibility_from_alpha",
    "render_visibility_from_density",
    "render_weight_from_alpha",
    "render_weight_from_density",
    "rendering",
]

_NOT_PROVIDED = {
    "traverse_grids": "use OccGridEstimator.sampling (pyengine.ops.ray_march)",
    "importance_sampling": None,
    "searchsorted": None,
    "RayIntervals": None,
    "RaySamples": None,
    "PropNetEstimator": "use OccGridEstimator",
}


def __getattr__(name: str):
    # install_nerfacc registers this module as nerfacc.volrend & co.; ``import nerfacc.volrend``
    # then finds it in sys.modules and never sets the parent's attribute
    if name in ("volrend", "estimators", "occ_grid", "grid", "pack", "scan"):
        return sys.modules[__name__]
    if name in _NOT_PROVIDED:
        hint = _NOT_PROVIDED[name]
        raise AttributeError(f"nerfacc.{name} is not implemented by pyengine's nerfacc drop-in "
                             f"(pyengine.compat.nerfacc){'; ' + hint if hint else ''}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Layout: packed or batched samples --------------------------------------------------------------

class _Layout(NamedTuple):
    """Samples as packed rays: ``packed_info`` [R, 2]; ``batch`` the leading dims of batched
    inputs (None for packed ones); ``validate`` whether composite must check packed_info."""

    packed_info: Tensor
    batch: tuple | None
    validate: bool


def _check_tensor(fn: str, name: str, t, floating: bool = True) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {t.dtype}")
    if not floating and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{fn}: {name} must be an integer tensor, got {t.dtype}")


def _same_shape(fn: str, ref_name: str, ref: Tensor, **others) -> None:
    for name, t in others.items():
        if t is None:
            continue
        _check_tensor(fn, name, t)
        if t.shape != ref.shape:
            raise ValueError(f"{fn}: {name} must have the shape of {ref_name}, {tuple(ref.shape)}, got "
                             f"{tuple(t.shape)} (nerfacc >= 0.5 takes per-sample tensors of shape (S,) or "
                             f"(n_rays, n_samples), without a trailing 1)")


def _check_n_rays(fn: str, n_rays) -> int:
    try:
        n = operator.index(n_rays)
    except TypeError:
        raise TypeError(f"{fn}: n_rays must be an int, got {type(n_rays).__name__}") from None
    if n < 0:
        raise ValueError(f"{fn}: n_rays must be >= 0, got {n}")
    return n


class _Packing:
    """Sorted ray indices as rays: ``packed_info`` [R, 2] int64 (start, count); ``uniform`` is
    the common count when every ray has as many samples (the samples are then a [R, uniform]
    batch in disguise), else None, computed on first use."""

    def __init__(self, packed_info: Tensor, n_samples: int):
        self.packed_info, self.n_samples = packed_info, n_samples
        self._uniform: int | None | bool = False

    @property
    def uniform(self) -> int | None:
        if self._uniform is False:
            R, S = self.packed_info.shape[0], self.n_samples
            ok = R > 0 and S % R == 0 and bool((self.packed_info[:, 1] == S // R).all())
            self._uniform = S // R if ok else None
        return self._uniform


# The last packing computed, keyed by the ray_indices tensor (a weak reference), its version
# counter (bumped by in-place writes) and n_rays: render_weight_from_density followed by
# accumulate_along_rays for colours, opacities and depths, all with one ray_indices, check and
# pack it once. One slot only: a training step works on one set of samples at a time.
_last_packing: tuple | None = None


def _sort_check(fn: str, ray_indices: Tensor, n_rays) -> tuple[int, bool]:
    """(n_rays, sorted) for [S] integer ray indices; ValueError for indices outside [0, n_rays).
    Sorted, the range check needs only the first and last index."""
    idx = ray_indices
    if idx.numel() == 0:
        return (0 if n_rays is None else _check_n_rays(fn, n_rays)), True
    unsorted = idx[1:] < idx[:-1]
    bad, lo, hi = torch.stack([unsorted.any().to(idx.dtype), idx[0], idx[-1]]).tolist()
    if bad:
        lo, hi = torch.stack([idx.min(), idx.max()]).tolist()
    n = hi + 1 if n_rays is None else _check_n_rays(fn, n_rays)
    if lo < 0 or hi >= n:
        raise ValueError(f"{fn}: ray_indices must lie in [0, n_rays) = [0, {n}), got values in [{lo}, {hi}]")
    return n, not bad


def _not_sorted(fn: str, ray_indices: Tensor) -> ValueError:
    i = int(torch.nonzero(ray_indices[1:] < ray_indices[:-1])[0, 0])
    return ValueError(f"{fn}: ray_indices must be sorted (non-decreasing); ray_indices[{i}] = "
                      f"{int(ray_indices[i])} > ray_indices[{i + 1}] = {int(ray_indices[i + 1])} (samples must be "
                      f"grouped ray after ray, as the estimators return them)")


def _packing(fn: str, ray_indices: Tensor, n_rays, required: bool = True) -> _Packing | None:
    """The rays of sorted ``ray_indices`` [S] (n_rays None: ``max + 1``, as nerfacc's pack_info).

    Unsorted indices raise ValueError when ``required``, else give None. Costs one pass over the
    indices to check the order, and a binary search per ray for the ray boundaries.
    """
    global _last_packing
    hit = _last_packing
    version = None if ray_indices.is_inference() else ray_indices._version  # (inference tensors have none)
    if (version is not None and hit is not None and hit[0]() is ray_indices and hit[1] == version
            and n_rays in (hit[2], hit[3])):
        if hit[4] is None and required:
            raise _not_sorted(fn, ray_indices)
        return hit[4]
    n, ok = _sort_check(fn, ray_indices, n_rays)
    packing = None
    if ok:
        idx = ray_indices if ray_indices.dtype in (torch.int32, torch.int64) else ray_indices.long()
        # bounds[r] = first sample of ray r or after (the number of samples of rays < r)
        bounds = torch.searchsorted(idx, torch.arange(n + 1, dtype=idx.dtype, device=idx.device))
        packing = _Packing(torch.stack([bounds[:-1], bounds.diff()], -1), idx.shape[0])
    if version is not None:
        _last_packing = (weakref.ref(ray_indices), version, n_rays, n, packing)
    if packing is None and required:
        raise _not_sorted(fn, ray_indices)
    return packing


def _layout(fn: str, x: Tensor, x_name: str, packed_info: Tensor | None, ray_indices: Tensor | None,
            n_rays) -> _Layout:
    """How the samples of ``x`` ([S] packed or [..., n_samples] batched) group into rays."""
    if packed_info is not None:
        _check_tensor(fn, "packed_info", packed_info, floating=False)
        if packed_info.dim() != 2 or packed_info.shape[1] != 2:
            raise ValueError(f"{fn}: packed_info must be (n_rays, 2) (start, count), got shape "
                             f"{tuple(packed_info.shape)}")
        if x.dim() != 1:
            raise ValueError(f"{fn}: with packed_info, {x_name} must be flattened (all_samples,), got shape "
                             f"{tuple(x.shape)}")
        return _Layout(packed_info, None, True)
    if ray_indices is not None:
        _check_tensor(fn, "ray_indices", ray_indices, floating=False)
        if ray_indices.dim() != 1 or ray_indices.shape != x.shape:
            raise ValueError(f"{fn}: ray_indices must be (all_samples,) like {x_name}, {tuple(x.shape)}, got "
                             f"shape {tuple(ray_indices.shape)}")
        if ray_indices.device != x.device:
            raise ValueError(f"{fn}: ray_indices is on {ray_indices.device} but {x_name} on {x.device}")
        return _Layout(_packing(fn, ray_indices, n_rays).packed_info, None, False)
    if x.dim() == 0:
        raise ValueError(f"{fn}: {x_name} must be (n_rays, n_samples) (batched) or (all_samples,) with "
                         f"packed_info or ray_indices, got a 0-d tensor")
    batch, n = tuple(x.shape[:-1]), x.shape[-1]
    rays = torch.arange(functools.reduce(operator.mul, batch, 1), device=x.device)
    return _Layout(torch.stack([rays * n, torch.full_like(rays, n)], -1), batch, False)


def _promoted(*tensors: Tensor | None) -> torch.dtype:
    return functools.reduce(torch.promote_types, [t.dtype for t in tensors if t is not None])


def _needs_t_grad(t_starts: Tensor, t_ends: Tensor) -> bool:
    return torch.is_grad_enabled() and (t_starts.requires_grad or t_ends.requires_grad)


def _composite(layout: _Layout, t_starts: Tensor, t_ends: Tensor, sigmas: Tensor | None = None,
               alphas: Tensor | None = None, values: Tensor | None = None) -> CompositeResult:
    """One fused ``composite`` call on flattened samples.

    When t_starts / t_ends require grad in density mode, the op gets ``tau = sigma * dt`` as the
    density of unit intervals, so that autograd carries the gradient on to the t's (the op itself
    is not differentiable w.r.t. them). Its ``depth`` is then meaningless: callers that need it
    pass ``t_mid`` as a value channel instead.
    """
    t0, t1 = t_starts.reshape(-1), t_ends.reshape(-1)
    if sigmas is not None:
        sigmas = sigmas.reshape(-1)
        if _needs_t_grad(t_starts, t_ends):
            sigmas = sigmas * (t1 - t0)
            t0, t1 = torch.zeros_like(sigmas), torch.ones_like(sigmas)
    else:
        alphas = alphas.reshape(-1)
    return composite(layout.packed_info, t0, t1, densities=sigmas, alphas=alphas, values=values,
                     validate=layout.validate)


def _check_prefix(fn: str, prefix_trans: Tensor | None, x: Tensor, x_name: str) -> None:
    if prefix_trans is None:
        return
    _check_tensor(fn, "prefix_trans", prefix_trans)
    try:
        ok = torch.broadcast_shapes(prefix_trans.shape, x.shape) == x.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{fn}: prefix_trans must have the shape of {x_name}, {tuple(x.shape)}, got "
                         f"{tuple(prefix_trans.shape)}")


# Volume rendering (nerfacc.volrend) --------------------------------------------------------------

def _from_density(fn, t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays, prefix_trans):
    _check_tensor(fn, "t_starts", t_starts)
    _same_shape(fn, "t_starts", t_starts, t_ends=t_ends, sigmas=sigmas)
    _check_prefix(fn, prefix_trans, sigmas, "sigmas")
    layout = _layout(fn, sigmas, "sigmas", packed_info, ray_indices, n_rays)
    out = _composite(layout, t_starts, t_ends, sigmas=sigmas)
    dtype = _promoted(t_starts, t_ends, sigmas)
    weights, trans, alphas = (t.to(dtype).reshape(sigmas.shape) for t in out[:3])
    if prefix_trans is not None:
        weights, trans = weights * prefix_trans, trans * prefix_trans
    return weights, trans, alphas


def _from_alpha(fn, alphas, packed_info, ray_indices, n_rays, prefix_trans):
    _check_tensor(fn, "alphas", alphas)
    _check_prefix(fn, prefix_trans, alphas, "alphas")
    layout = _layout(fn, alphas, "alphas", packed_info, ray_indices, n_rays)
    flat = alphas.reshape(-1)
    out = _composite(layout, torch.zeros_like(flat), torch.ones_like(flat), alphas=flat)
    weights, trans = (t.to(alphas.dtype).reshape(alphas.shape) for t in out[:2])
    if prefix_trans is not None:
        weights, trans = weights * prefix_trans, trans * prefix_trans
    return weights, trans


def render_weight_from_density(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor,
                               packed_info: Tensor | None = None, ray_indices: Tensor | None = None,
                               n_rays: int | None = None,
                               prefix_trans: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Rendering weights ``w_i = T_i (1 - exp(-sigma_i dt_i))``, ``T_i = exp(-sum_{j<i} sigma_j dt_j)``.

    Args:
        t_starts, t_ends: [S] (packed) or [n_rays, n_samples] (batched) sample intervals.
        sigmas: densities, same shape.
        packed_info: [n_rays, 2] (start, count) of each ray's samples, for packed input.
        ray_indices: [S] sorted ray of each sample, for packed input without packed_info.
        n_rays: number of rays with ray_indices; None: ``ray_indices.max() + 1``.
        prefix_trans: transmittance before the first sample, multiplied into the outputs; shape
            of sigmas.

    Returns:
        ``(weights, transmittance, alphas)``, each of the shape of sigmas.

    Example:
        >>> t_starts = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]); t_ends = t_starts + 1
        >>> sigmas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> w, trans, alphas = render_weight_from_density(
        ...     t_starts, t_ends, sigmas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]))
        >>> [round(t, 2) for t in trans.tolist()]
        [1.0, 0.67, 0.3, 1.0, 0.45, 1.0, 1.0]
    """
    return _from_density("render_weight_from_density", t_starts, t_ends, sigmas, packed_info, ray_indices,
                         n_rays, prefix_trans)


def render_transmittance_from_density(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor,
                                      packed_info: Tensor | None = None, ray_indices: Tensor | None = None,
                                      n_rays: int | None = None,
                                      prefix_trans: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Transmittance ``T_i = exp(-sum_{j<i} sigma_j dt_j)`` and ``alpha_i = 1 - exp(-sigma_i dt_i)``.

    Arguments as ``render_weight_from_density``. Returns ``(transmittance, alphas)``, each of the
    shape of sigmas.

    Example:
        >>> trans, alphas = render_transmittance_from_density(
        ...     torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]), torch.tensor([0.4, 0.8]))
        >>> [round(a, 2) for a in alphas.tolist()]
        [0.33, 0.55]
    """
    _, trans, alphas = _from_density("render_transmittance_from_density", t_starts, t_ends, sigmas,
                                     packed_info, ray_indices, n_rays, prefix_trans)
    return trans, alphas


def render_weight_from_alpha(alphas: Tensor, packed_info: Tensor | None = None,
                             ray_indices: Tensor | None = None, n_rays: int | None = None,
                             prefix_trans: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rendering weights ``w_i = T_i alpha_i``, ``T_i = prod_{j<i} (1 - alpha_j)``.

    Args:
        alphas: [S] (packed) or [n_rays, n_samples] (batched) opacities in [0, 1].
        packed_info, ray_indices, n_rays, prefix_trans: as in ``render_weight_from_density``.

    Returns:
        ``(weights, transmittance)``, each of the shape of alphas.

    Example:
        >>> alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> w, trans = render_weight_from_alpha(alphas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]))
        >>> [round(x, 3) for x in w.tolist()]
        [0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9]
    """
    return _from_alpha("render_weight_from_alpha", alphas, packed_info, ray_indices, n_rays, prefix_trans)


def render_transmittance_from_alpha(alphas: Tensor, packed_info: Tensor | None = None,
                                    ray_indices: Tensor | None = None, n_rays: int | None = None,
                                    prefix_trans: Tensor | None = None) -> Tensor:
    """Transmittance ``T_i = prod_{j<i} (1 - alpha_j)``, of the shape of alphas.

    Arguments as ``render_weight_from_alpha``.

    Example:
        >>> alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> trans = render_transmittance_from_alpha(alphas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]))
        >>> [round(t, 2) for t in trans.tolist()]
        [1.0, 0.6, 0.12, 1.0, 0.2, 1.0, 1.0]
    """
    return _from_alpha("render_transmittance_from_alpha", alphas, packed_info, ray_indices, n_rays,
                       prefix_trans)[1]


@torch.no_grad()
def render_visibility_from_alpha(alphas: Tensor, packed_info: Tensor | None = None,
                                 ray_indices: Tensor | None = None, n_rays: int | None = None,
                                 early_stop_eps: float = 1e-4, alpha_thre: float = 0.0,
                                 prefix_trans: Tensor | None = None) -> Tensor:
    """Samples worth shading: ``T_i >= early_stop_eps`` and, if ``alpha_thre > 0``, ``alpha_i >= alpha_thre``.

    Arguments as ``render_weight_from_alpha``. Returns a bool tensor of the shape of alphas.

    Example:
        >>> alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> render_visibility_from_alpha(alphas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]),
        ...                              early_stop_eps=0.3, alpha_thre=0.2).tolist()
        [True, True, False, True, False, False, True]
    """
    trans = _from_alpha("render_visibility_from_alpha", alphas, packed_info, ray_indices, n_rays,
                        prefix_trans)[1]
    vis = trans >= early_stop_eps
    return vis & (alphas >= alpha_thre) if alpha_thre > 0 else vis


@torch.no_grad()
def render_visibility_from_density(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor,
                                   packed_info: Tensor | None = None, ray_indices: Tensor | None = None,
                                   n_rays: int | None = None, early_stop_eps: float = 1e-4,
                                   alpha_thre: float = 0.0, prefix_trans: Tensor | None = None) -> Tensor:
    """As ``render_visibility_from_alpha``, from densities (arguments of ``render_weight_from_density``)."""
    _, trans, alphas = _from_density("render_visibility_from_density", t_starts, t_ends, sigmas, packed_info,
                                     ray_indices, n_rays, prefix_trans)
    vis = trans >= early_stop_eps
    return vis & (alphas >= alpha_thre) if alpha_thre > 0 else vis


_arange_cache: dict = {}


def _arange(n: int, device: torch.device) -> Tensor:
    """torch.arange(n) (int64), sliced from a cached one per device that grows as needed."""
    a = _arange_cache.get(device)
    if a is None or a.shape[0] < n:
        a = _arange_cache[device] = torch.arange(max(n, 1024), device=device)
    return a[:n]


def _segment_dot_sums(w: Tensor, v: Tensor, starts: Tensor) -> Tensor:
    """[R, D] sums of w[i] v[i] over the consecutive segments of [S] beginning at starts [R]
    (sorted, the last one running to S): one fused weighted gather-sum (embedding_bag, sum mode),
    which runs at memory speed where ``(w[:, None] * v)`` followed by a sum does not."""
    if w.dtype in (torch.float32, torch.float64) and starts.numel() and w.numel():
        return torch.nn.functional.embedding_bag(_arange(w.shape[0], w.device), v, starts, mode="sum",
                                                 per_sample_weights=w)
    return torch.segment_reduce(w[:, None] * v, "sum", offsets=torch.cat([starts, starts.new_full((1,), w.shape[0])]),
                                axis=0, unsafe=True) if starts.numel() else v.new_zeros(0, v.shape[1])


class _WeightedSum(torch.autograd.Function):
    """Per-ray ``sum_i w_i v_i`` of samples grouped ray after ray: w [S], v [S, D], starts [R]
    (the first sample of each ray, sorted; every ray runs to the next one's start). ``ray_len``
    is the common length when every ray has as many samples (the batched layout), else None and
    ``ray_indices`` [S] is the ray of each sample.

    The forward is one weighted segment sum; the backward, ``dL/dw_i = <g_r(i), v_i>`` and
    ``dL/dv_i = w_i g_r(i)``, uses batched matrix products over [R, N, D] when the rays are
    equal, else a gather of g. Both avoid the [S, D] products of the plain formula, which run far
    below memory speed on CPU with a handful of channels. Twice differentiable (the backward is
    made of differentiable ops)."""

    @staticmethod
    def forward(ctx, w: Tensor, v: Tensor, starts: Tensor, ray_len: int | None, ray_indices: Tensor | None):
        ctx.save_for_backward(w, v, ray_indices)
        ctx.ray_len = ray_len
        return _segment_dot_sums(w, v, starts)

    @staticmethod
    def backward(ctx, g: Tensor):
        w, v, ray_indices = ctx.saved_tensors
        D, N = v.shape[1], ctx.ray_len
        gw = gv = None
        if N is not None:  # [R, N, D] batched
            R = g.shape[0]
            if ctx.needs_input_grad[0]:
                gw = torch.bmm(v.reshape(R, N, D), g.reshape(R, D, 1)).reshape(w.shape)
            if ctx.needs_input_grad[1]:
                gv = (w.reshape(R, N, 1) * g.reshape(R, 1, D)).reshape(v.shape)
        else:
            g_rows = g.index_select(0, ray_indices)
            if ctx.needs_input_grad[0]:
                gw = (v * g_rows).sum(-1)
            if ctx.needs_input_grad[1]:
                gv = w[:, None] * g_rows
        return gw, gv, None, None, None


def _check_weights_values(fn: str, weights: Tensor, values: Tensor | None) -> None:
    _check_tensor(fn, "weights", weights)
    if values is None:
        return
    _check_tensor(fn, "values", values)
    if values.dim() != weights.dim() + 1 or values.shape[:-1] != weights.shape:
        raise ValueError(f"{fn}: values must be weights' shape {tuple(weights.shape)} plus a channel dim, "
                         f"(..., D), got {tuple(values.shape)}")


def _sum_batched(weights: Tensor, values: Tensor | None) -> Tensor:
    """[..., D] sums over the samples of batched [..., N] weights and [..., N, D] values."""
    if values is None:
        return weights.sum(-1, keepdim=True)
    dtype = torch.promote_types(weights.dtype, values.dtype)
    lead, N, D = weights.shape[:-1], weights.shape[-1], values.shape[-1]
    R = lead.numel()
    starts = _arange(R, weights.device) * N
    out = _WeightedSum.apply(weights.to(dtype).reshape(R * N), values.to(dtype).reshape(R * N, D), starts, N, None)
    return out.reshape(lead + (D,))


def _sum_packed(fn: str, weights: Tensor, values: Tensor | None, ray_indices: Tensor, n: int) -> Tensor:
    """[n, D] per-ray sums of flattened weights [S] and values [S, D] | None, ray_indices [S]."""
    _check_tensor(fn, "ray_indices", ray_indices, floating=False)
    if weights.dim() != 1:
        raise ValueError(f"{fn}: with ray_indices, weights must be flattened (all_samples,), got shape "
                         f"{tuple(weights.shape)}")
    if ray_indices.shape != weights.shape:
        raise ValueError(f"{fn}: ray_indices must have the shape of weights, {tuple(weights.shape)}, got "
                         f"{tuple(ray_indices.shape)}")
    packing = _packing(fn, ray_indices, n, required=False)  # None: not sorted, still in range
    if packing is not None and packing.uniform:  # every ray has N samples: a [n, N] batch
        N = packing.uniform
        return _sum_batched(weights.reshape(n, N), None if values is None else values.reshape(n, N, -1))
    if packing is not None and values is not None:  # sorted, rays of different lengths
        dtype = torch.promote_types(weights.dtype, values.dtype)
        return _WeightedSum.apply(weights.to(dtype), values.to(dtype), packing.packed_info[:, 0], None,
                                  ray_indices.long())
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros((n, src.shape[-1]), dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices.long(), src)


def accumulate_along_rays(weights: Tensor, values: Tensor | None = None, ray_indices: Tensor | None = None,
                          n_rays: int | None = None) -> Tensor:
    """Per-ray sums ``sum_i w_i v_i`` (``sum_i w_i`` when values is None).

    Arbitrary weights cannot go through the fused compositing op, which derives them. Samples
    grouped ray after ray (batched, or packed with sorted ray_indices) take one weighted segment
    sum; unsorted ray_indices a scatter-add. ``rendering`` does not call this.

    Args:
        weights: [S] with ray_indices (any order), else batched [n_rays, n_samples].
        values: [S, D] or [n_rays, n_samples, D]; None accumulates the weights (D = 1).
        ray_indices: [S] ray of each sample, or None for batched input.
        n_rays: number of rays; required with ray_indices (as in nerfacc).

    Returns:
        [n_rays, D]. Differentiable w.r.t. weights and values.

    Example:
        >>> w = torch.tensor([0.5, 0.25, 0.2])
        >>> accumulate_along_rays(w, None, torch.tensor([0, 0, 2]), n_rays=3).flatten().tolist()
        [0.75, 0.0, 0.20000000298023224]
    """
    fn = "accumulate_along_rays"
    _check_weights_values(fn, weights, values)
    if ray_indices is None:
        return _sum_batched(weights, values)
    if n_rays is None:
        raise ValueError(f"{fn}: n_rays must be provided with ray_indices")
    return _sum_packed(fn, weights, values, ray_indices, _check_n_rays(fn, n_rays))


def accumulate_along_rays_(weights: Tensor, values: Tensor | None = None, ray_indices: Tensor | None = None,
                           outputs: Tensor | None = None) -> None:
    """In-place ``accumulate_along_rays``: adds the per-ray sums into ``outputs`` [n_rays, D]."""
    fn = "accumulate_along_rays_"
    _check_weights_values(fn, weights, values)
    if not isinstance(outputs, Tensor):
        raise TypeError(f"{fn}: outputs must be a torch.Tensor, got {type(outputs).__name__}")
    D = 1 if values is None else values.shape[-1]
    if ray_indices is None:
        outputs.add_(_sum_batched(weights, values))
        return
    if outputs.dim() != 2 or outputs.shape[-1] != D:
        raise ValueError(f"{fn}: outputs must be (n_rays, {D}), got {tuple(outputs.shape)}")
    outputs.add_(_sum_packed(fn, weights, values, ray_indices, outputs.shape[0]))


def rendering(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor | None = None, n_rays: int | None = None,
              rgb_sigma_fn: Callable | None = None, rgb_alpha_fn: Callable | None = None,
              render_bkgd: Tensor | None = None, *,
              expected_depths: bool = True) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Renders rays through a radiance field: one fused ``composite`` call for every output.

    Args:
        t_starts, t_ends: [S] with ray_indices, or batched [n_rays, n_samples].
        ray_indices: [S] sorted ray of each sample (packed input), or None.
        n_rays: number of rays; required with ray_indices.
        rgb_sigma_fn: ``(t_starts, t_ends, ray_indices) -> (rgbs [..., C], sigmas [...])``, ``...``
            the shape of t_starts; called with gradients enabled.
        rgb_alpha_fn: the same returning opacities instead of densities. Exactly one is used
            (rgb_sigma_fn when both are given, as nerfacc).
        render_bkgd: [C] (or broadcastable) background, blended as ``colors + bkgd (1 - opacity)``.
        expected_depths: divide the depth by the opacity (clamped to the rgbs dtype's eps), as
            nerfacc 0.5 does; False returns ``sum_i w_i (t_start_i + t_end_i) / 2``.

    Returns:
        ``(colors [n_rays, C], opacities [n_rays, 1], depths [n_rays, 1], extras)``; extras holds
        ``weights``, ``alphas``, ``trans`` (shape of t_starts) and ``sigmas`` and ``rgbs`` (density
        mode) or ``rgbs`` (alpha mode), in nerfacc's key order. Differentiable w.r.t. the field's
        outputs and render_bkgd.

    Example:
        >>> def rgb_sigma_fn(t0, t1, ray_indices):
        ...     return torch.ones(t0.shape[0], 3), torch.full_like(t0, 10.0)
        >>> t_starts = torch.tensor([0.1, 0.2, 0.1, 0.2, 0.3]); t_ends = t_starts + 0.1
        >>> colors, opacities, depths, extras = rendering(
        ...     t_starts, t_ends, torch.tensor([0, 0, 1, 1, 1]), n_rays=2, rgb_sigma_fn=rgb_sigma_fn)
        >>> colors.shape, opacities.shape, depths.shape, list(extras)
        (torch.Size([2, 3]), torch.Size([2, 1]), torch.Size([2, 1]), ['weights', 'alphas', 'trans', 'sigmas', 'rgbs'])
    """
    fn = "rendering"
    _check_tensor(fn, "t_starts", t_starts)
    _same_shape(fn, "t_starts", t_starts, t_ends=t_ends)
    if ray_indices is not None:
        _check_tensor(fn, "ray_indices", ray_indices, floating=False)
        if ray_indices.shape != t_starts.shape or t_starts.dim() != 1:
            raise ValueError(f"{fn}: t_starts, t_ends and ray_indices must have the same shape (S,) (since "
                             f"nerfacc 0.5), got {tuple(t_starts.shape)} and {tuple(ray_indices.shape)}")
        if n_rays is None:
            raise ValueError(f"{fn}: n_rays must be provided with ray_indices")
    if rgb_sigma_fn is None and rgb_alpha_fn is None:
        raise ValueError(f"{fn}: at least one of rgb_sigma_fn and rgb_alpha_fn should be specified")
    density = rgb_sigma_fn is not None
    field, x_name = (rgb_sigma_fn, "sigmas") if density else (rgb_alpha_fn, "alphas")

    if t_starts.shape[0] != 0:
        rgbs, x = field(t_starts, t_ends, ray_indices)
    else:  # nerfacc does not call the field without samples
        rgbs = torch.empty(t_starts.shape + (3,), device=t_starts.device)
        x = torch.empty(t_starts.shape, device=t_starts.device)
    _check_tensor(fn, "rgbs (the field's first output)", rgbs)
    _check_tensor(fn, f"{x_name} (the field's second output)", x)
    if rgbs.dim() != t_starts.dim() + 1 or rgbs.shape[:-1] != t_starts.shape:
        raise ValueError(f"{fn}: the field must return rgbs of shape {tuple(t_starts.shape) + ('C',)} (the "
                         f"shape of t_starts plus channels), got {tuple(rgbs.shape)}")
    if x.shape != t_starts.shape:
        raise ValueError(f"{fn}: the field must return {x_name} of the shape of t_starts, {tuple(t_starts.shape)}, "
                         f"got {tuple(x.shape)}")

    layout = _layout(fn, t_starts, "t_starts", None, ray_indices, n_rays)
    C = rgbs.shape[-1]
    values = rgbs.reshape(-1, C)
    t_grad = _needs_t_grad(t_starts, t_ends)
    if t_grad:  # depth through a value channel, so that it is differentiable w.r.t. the t's
        dtype = torch.promote_types(values.dtype, t_starts.dtype)
        t_mid = ((t_starts + t_ends) * 0.5).reshape(-1, 1)
        values = torch.cat([values.to(dtype), t_mid.to(dtype)], 1)
    out = _composite(layout, t_starts, t_ends, sigmas=x if density else None, alphas=None if density else x,
                     values=values)

    dtype = _promoted(t_starts, t_ends, x, rgbs)
    colors = out.accumulated[:, :C].to(dtype)
    opacities = out.opacity[:, None].to(dtype)
    depths = (out.accumulated[:, C:] if t_grad else out.depth[:, None]).to(dtype)
    if expected_depths:
        depths = depths / opacities.clamp_min(torch.finfo(rgbs.dtype).eps)
    if render_bkgd is not None:
        _check_tensor(fn, "render_bkgd", render_bkgd)
        colors = colors + render_bkgd * (1.0 - opacities)

    shape = t_starts.shape
    weights, trans, alphas = (t.to(dtype).reshape(shape) for t in out[:3])
    if layout.batch is not None:
        colors, opacities, depths = (t.reshape(layout.batch + t.shape[-1:]) for t in (colors, opacities, depths))
    if density:
        extras = {"weights": weights, "alphas": alphas, "trans": trans, "sigmas": x, "rgbs": rgbs}
    else:
        extras = {"weights": weights, "trans": trans, "rgbs": rgbs, "alphas": x}
    return colors, opacities, depths, extras


# Scans (nerfacc.scan) and pack_info (nerfacc.pack) -----------------------------------------------

def pack_info(ray_indices: Tensor, n_rays: int | None = None) -> Tensor:
    """packed_info [n_rays, 2] (start, count) of sorted ray indices; n_rays None: ``max + 1``.

    Example:
        >>> pack_info(torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2]), n_rays=3).tolist()
        [[0, 2], [2, 3], [5, 4]]
    """
    _check_tensor("pack_info", "ray_indices", ray_indices, floating=False)
    if ray_indices.dim() != 1:
        raise ValueError(f"pack_info: ray_indices must be (n_samples,), got shape {tuple(ray_indices.shape)}")
    return _packing("pack_info", ray_indices, n_rays).packed_info


def _chunks(fn: str, inputs: Tensor, packed_info: Tensor | None, indices: Tensor | None) -> tuple[Tensor, Tensor]:
    """(starts, counts) [R] int64 of the chunks of flattened inputs [S]: packed_info's, checked
    to lie in [0, S) without overlapping, or those of sorted indices."""
    if packed_info is None:
        packed_info = _layout(fn, inputs, "inputs", None, indices, None).packed_info
        return packed_info[:, 0], packed_info[:, 1]
    packed_info = _layout(fn, inputs, "inputs", packed_info, None, None).packed_info
    starts, counts = packed_info[:, 0].long(), packed_info[:, 1].long()
    if counts.numel():
        ends = starts + counts
        order = torch.argsort(torch.where(counts > 0, starts, inputs.shape[0]))
        live = (counts > 0)[order]
        overlap = (starts[order][1:] < ends[order][:-1]) & live[1:] & live[:-1]
        bad = torch.stack([(starts < 0).any(), (counts < 0).any(), (ends > inputs.shape[0]).any(), overlap.any()])
        if bad.any():
            raise ValueError(f"{fn}: packed_info chunks must lie in [0, {inputs.shape[0]}), with counts >= 0 and "
                             f"without overlapping")
    return starts, counts


def _scan(fn: str, inputs: Tensor, packed_info: Tensor | None, indices: Tensor | None, prod: bool,
          exclusive: bool) -> Tensor:
    """Cumulative sum / product along the last dim (batched) or within each chunk (packed).

    Packed input runs the fused op ``pyengine.ops.segment_scan``: one pass per chunk, no padding
    (nerfacc pads to the longest chunk). Samples outside every chunk get the identity (0 or 1).
    """
    _check_tensor(fn, "inputs", inputs)
    identity = 1.0 if prod else 0.0
    if packed_info is None and indices is None:
        cum = torch.cumprod if prod else torch.cumsum
        if exclusive:
            inputs = torch.cat([torch.full_like(inputs[..., :1], identity), inputs[..., :-1]], -1)
        return cum(inputs, -1)
    if inputs.dim() != 1:
        raise ValueError(f"{fn}: with packed_info or indices, inputs must be flattened (n_samples,), got shape "
                         f"{tuple(inputs.shape)}")
    starts, counts = _chunks(fn, inputs, packed_info, indices)
    return segment_scan(inputs, torch.stack([starts, counts], -1), prod=prod, exclusive=exclusive)


def inclusive_sum(inputs: Tensor, packed_info: Tensor | None = None, indices: Tensor | None = None) -> Tensor:
    """``torch.cumsum(inputs, -1)``, or per chunk of flattened inputs (packed_info or sorted indices).

    Example:
        >>> inclusive_sum(torch.arange(1.0, 10.0), torch.tensor([[0, 2], [2, 3], [5, 4]])).tolist()
        [1.0, 3.0, 3.0, 7.0, 12.0, 6.0, 13.0, 21.0, 30.0]
    """
    return _scan("inclusive_sum", inputs, packed_info, indices, prod=False, exclusive=False)


def exclusive_sum(inputs: Tensor, packed_info: Tensor | None = None, indices: Tensor | None = None) -> Tensor:
    """As ``inclusive_sum``, excluding each element (the first of each chunk gets 0)."""
    return _scan("exclusive_sum", inputs, packed_info, indices, prod=False, exclusive=True)


def inclusive_prod(inputs: Tensor, packed_info: Tensor | None = None, indices: Tensor | None = None) -> Tensor:
    """``torch.cumprod(inputs, -1)``, or per chunk of flattened inputs (packed_info or sorted indices)."""
    return _scan("inclusive_prod", inputs, packed_info, indices, prod=True, exclusive=False)


def exclusive_prod(inputs: Tensor, packed_info: Tensor | None = None, indices: Tensor | None = None) -> Tensor:
    """As ``inclusive_prod``, excluding each element (the first of each chunk gets 1).

    Example:
        >>> exclusive_prod(torch.arange(1.0, 10.0), torch.tensor([[0, 2], [2, 3], [5, 4]])).tolist()
        [1.0, 1.0, 1.0, 3.0, 12.0, 1.0, 6.0, 42.0, 336.0]
    """
    return _scan("exclusive_prod", inputs, packed_info, indices, prod=True, exclusive=True)


# Estimator (nerfacc.estimators.occ_grid) ---------------------------------------------------------

class OccGridEstimator(OccupancyGrid):
    """nerfacc's ``OccGridEstimator``: ``pyengine.nn.occupancy_grid.OccupancyGrid`` under nerfacc's name.

    Same constructor (extra keyword arguments are ignored, as nerfacc does, except ``backend``,
    passed on to the ops), buffers, ``sampling``, ``update_every_n_steps`` and
    ``mark_invisible_cells``. ``grid_coords`` and ``grid_indices`` are computed on access rather
    than stored (nerfacc keeps them as non-persistent buffers).

    Example:
        >>> est = OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=16)
        >>> est.update_every_n_steps(0, lambda x: torch.ones(x.shape[0], 1), n=1)
        >>> ray_indices, t_starts, t_ends = est.sampling(torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]]),
        ...                                              render_step_size=0.1)
        >>> ray_indices.shape == t_starts.shape == t_ends.shape
        True
    """

    def __init__(self, roi_aabb, resolution=128, levels: int = 1, **kwargs):
        if "contraction_type" in kwargs:
            raise ValueError("OccGridEstimator: `contraction_type` is not supported anymore for nerfacc >= 0.4.0")
        super().__init__(roi_aabb, resolution, levels, backend=kwargs.get("backend"))

    @property
    def grid_coords(self) -> Tensor:
        """[X * Y * Z, 3] int64 integer coordinates of the cells of one level, in ``occs`` order."""
        X, Y, Z = self.resolution.tolist()
        axes = [torch.arange(n, device=self.device) for n in (X, Y, Z)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    @property
    def grid_indices(self) -> Tensor:
        """[X * Y * Z] int64 flat index of each cell within a level."""
        return torch.arange(self.cells_per_lvl, device=self.device)

    @torch.no_grad()
    def mark_invisible_cells(self, K: Tensor, c2w: Tensor, width: int, height: int, near_plane: float = 0.0,
                             chunk: int = 32**3) -> None:
        """Sets ``occs`` to -1 for cells that no camera sees (and to 0 for the others); call once
        before training. Marked cells are never updated and stay empty.

        A cell, taken at its grid point ``aabb_min + coord / (res - 1) * (aabb_max - aabb_min)`` (as
        nerfacc), is visible when it projects inside some image (pinhole, OpenCV axes: +z forward)
        at depth >= near_plane, and in front of no camera's near plane.

        Args:
            K: [N, 3, 3] or [1, 3, 3] intrinsics.
            c2w: [N, 3, 4] or [N, 4, 4] camera-to-world poses.
            width, height: image size in pixels.
            near_plane: cameras' near distance.
            chunk: cells per batch.
        """
        fn = "OccGridEstimator.mark_invisible_cells"
        _check_tensor(fn, "K", K)
        _check_tensor(fn, "c2w", c2w)
        if K.dim() != 3 or K.shape[1:] != (3, 3):
            raise ValueError(f"{fn}: K must be (N, 3, 3), got {tuple(K.shape)}")
        if c2w.dim() != 3 or c2w.shape[1:] not in ((3, 4), (4, 4)):
            raise ValueError(f"{fn}: c2w must be (N, 3, 4) or (N, 4, 4), got {tuple(c2w.shape)}")
        if K.shape[0] not in (1, c2w.shape[0]):
            raise ValueError(f"{fn}: K must hold 1 or N = {c2w.shape[0]} cameras, got {K.shape[0]}")
        K, c2w = K.to(self.aabbs), c2w.to(self.aabbs)
        rot_w2c = c2w[:, :3, :3].transpose(1, 2)  # [N, 3, 3]
        t_w2c = -rot_w2c @ c2w[:, :3, 3:]  # [N, 3, 1]
        coords = self.grid_coords.to(self.aabbs.dtype)
        span = (self.resolution - 1).clamp_min(1).to(self.aabbs.dtype)
        for lvl in range(self.levels):
            lo, hi = self.aabbs[lvl, :3], self.aabbs[lvl, 3:]
            for i in range(0, self.cells_per_lvl, chunk):
                xyz = lo + coords[i:i + chunk] / span * (hi - lo)  # [P, 3] world
                uvd = K @ (rot_w2c @ xyz.T + t_w2c)  # [N, 3, P]
                depth = uvd[:, 2]
                uv = uvd[:, :2] / depth[:, None]
                in_image = ((depth >= 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0)
                            & (uv[:, 1] < height))
                seen = (in_image & (depth >= near_plane)).any(0)
                too_near = (in_image & (depth < near_plane)).any(0)
                base = lvl * self.cells_per_lvl + i
                self.occs[base:base + xyz.shape[0]] = torch.where(seen & ~too_near, 0.0, -1.0).to(self.occs)
