"""``composite``: volume-rendering compositing over packed samples (nerfacc's maths), with backward.

Layers: ``composite()`` checks the inputs (packed_info's values too) and picks a backend name,
then calls the registered op ``torch.ops.pyengine.composite_fwd``; its autograd calls
``torch.ops.pyengine.composite_bwd``. ``pack_info()`` builds packed_info from sorted ray indices.

Backends share one signature (that of the compiled ``_C.composite_*`` functions); ``x`` is the
densities (``alpha_mode`` false) or the alphas (``alpha_mode`` true), ``values`` is ``[S, C]``
with ``C = 0`` when there is nothing to accumulate:

* ``composite_fwd(packed_info, t_starts, t_ends, x, values, alpha_mode)``
  ``-> (weights, transmittance, alphas, accumulated, opacity, depth)``
* ``composite_bwd(g_weights, g_trans, g_alphas, g_acc, g_opacity, g_depth, packed_info, t_starts,
  t_ends, x, values, transmittance, alpha_mode, need_x, need_values) -> (grad_x | None,
  grad_values | None)``; ``transmittance`` is the forward's output (the kernels' reverse scan
  reads it instead of recomputing it).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pyengine import _ext
from pyengine.ops import _dispatch
from pyengine.reference import composite as _ref
from pyengine.reference.composite import CompositeResult

__all__ = ["CompositeResult", "composite", "pack_info"]

OP = "composite"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_DTYPES = (torch.int32, torch.int64)


# Reference backend with the compiled functions' signatures, derived by autograd ----------------

def _ref_fwd(packed_info, t_starts, t_ends, x, values, alpha_mode):
    dens, alph = (None, x) if alpha_mode else (x, None)
    return tuple(_ref.composite(packed_info, t_starts, t_ends, dens, alph, values))


def _ref_bwd(g_weights, g_trans, g_alphas, g_acc, g_opacity, g_depth, packed_info, t_starts,
             t_ends, x, values, trans, alpha_mode, need_x, need_values):
    # torch.func rather than torch.autograd: this runs inside the custom op, below the autograd
    # dispatch key, where the tape would record nothing.
    _, vjp = torch.func.vjp(lambda xs, vs: _ref_fwd(packed_info, t_starts, t_ends, xs, vs, alpha_mode),
                            x, values)
    gx, gv = vjp((g_weights, g_trans, g_alphas, g_acc, g_opacity, g_depth))
    return (gx if need_x else None, gv if need_values else None)


_REFERENCE = SimpleNamespace(composite_fwd=_ref_fwd, composite_bwd=_ref_bwd)


def _triton_module():
    from pyengine.kernels import composite as mod

    return mod


# GPU order (the global DEFAULT_ORDER, cuda first) fits this op: on an H200, 2^20 samples, C = 3,
# the CUDA kernels took 58 us forward / 113 us backward against Triton's 186 / 111 us. With many
# channels (C >= 16) Triton's backward is about 2x faster (vector stores of the [rays, C] tile).
_dispatch.register(OP, "reference", lambda device, dtypes=(): None, lambda: _REFERENCE)
_dispatch.register(OP, "cpu", lambda device, dtypes=(): _dispatch.check_cpu_ext(device), _ext.load)
_dispatch.register(OP, "cuda", lambda device, dtypes=(): _dispatch.check_cuda_ext(device), _ext.load)
_dispatch.register(OP, "triton", _dispatch.check_triton_float32, _triton_module)


def _backend(name: str, t_starts: torch.Tensor):
    b = _dispatch.select(OP, t_starts.device, None if name == "auto" else name, dtypes=(t_starts.dtype,))
    return b.impl()


# Registered ops ----------------------------------------------------------------------------------

@torch.library.custom_op("pyengine::composite_fwd", mutates_args=())
def _composite_fwd_op(packed_info: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                      x: torch.Tensor, values: torch.Tensor, alpha_mode: bool,
                      backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                             torch.Tensor, torch.Tensor]:
    """(weights [S], transmittance [S], alphas [S], accumulated [R, C], opacity [R], depth [R])."""
    return tuple(_backend(backend, t_starts).composite_fwd(packed_info, t_starts, t_ends, x, values,
                                                           alpha_mode))


@_composite_fwd_op.register_fake
def _(packed_info, t_starts, t_ends, x, values, alpha_mode, backend):
    S, R, C = t_starts.shape[0], packed_info.shape[0], values.shape[1]
    new = t_starts.new_empty
    return new(S), new(S), new(S), new(R, C), new(R), new(R)


@torch.library.custom_op("pyengine::composite_bwd", mutates_args=())
def _composite_bwd_op(g_weights: torch.Tensor, g_trans: torch.Tensor, g_alphas: torch.Tensor,
                      g_acc: torch.Tensor, g_opacity: torch.Tensor, g_depth: torch.Tensor,
                      packed_info: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                      x: torch.Tensor, values: torch.Tensor, trans: torch.Tensor, alpha_mode: bool,
                      backend: str, need_x: bool,
                      need_values: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (grad_x, grad_values); a gradient not asked for is an empty tensor."""
    gx, gv = _backend(backend, t_starts).composite_bwd(
        g_weights.contiguous(), g_trans.contiguous(), g_alphas.contiguous(), g_acc.contiguous(),
        g_opacity.contiguous(), g_depth.contiguous(), packed_info, t_starts, t_ends, x, values, trans,
        alpha_mode, need_x, need_values)
    if need_values and gv is None:  # C = 0: the compiled backward returns None
        gv = torch.zeros_like(values)
    return (gx if need_x else x.new_empty(0), gv if need_values else values.new_empty(0))


@_composite_bwd_op.register_fake
def _(g_weights, g_trans, g_alphas, g_acc, g_opacity, g_depth, packed_info, t_starts, t_ends, x,
      values, trans, alpha_mode, backend, need_x, need_values):
    return (torch.empty_like(x) if need_x else x.new_empty(0),
            torch.empty_like(values) if need_values else values.new_empty(0))


# Autograd ----------------------------------------------------------------------------------------

def _fwd_setup(ctx, inputs, output):
    packed_info, t_starts, t_ends, x, values, alpha_mode, backend = inputs
    ctx.save_for_backward(packed_info, t_starts, t_ends, x, values, output[1])
    ctx.alpha_mode, ctx.backend = alpha_mode, backend


def _fwd_backward(ctx, *grads):
    packed_info, t_starts, t_ends, x, values, trans = ctx.saved_tensors
    need_x, need_v = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
    gx = gv = None
    if need_x or need_v:
        R, C = packed_info.shape[0], values.shape[1]
        shapes = [(x.shape[0],)] * 3 + [(R, C), (R,), (R,)]
        grads = [g if g is not None else x.new_zeros(s) for g, s in zip(grads, shapes)]
        gx, gv = torch.ops.pyengine.composite_bwd(*grads, packed_info, t_starts, t_ends, x, values,
                                                  trans, ctx.alpha_mode, ctx.backend, need_x, need_v)
    return None, None, None, (gx if need_x else None), (gv if need_v else None), None, None


torch.library.register_autograd("pyengine::composite_fwd", _fwd_backward, setup_context=_fwd_setup)


# Public functions --------------------------------------------------------------------------------

def _check_tensor(t, name, dtypes, what):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"composite: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"composite: {name} must be {what}, got {t.dtype}")


def check_inputs(packed_info, t_starts, t_ends, densities, alphas, values):
    """Raises TypeError / ValueError naming the argument for bad types, shapes and devices."""
    if (densities is None) == (alphas is None):
        which = "both" if densities is not None else "neither"
        raise ValueError(f"composite: pass exactly one of densities and alphas, got {which}")
    floats = "float16, bfloat16, float32 or float64"
    _check_tensor(packed_info, "packed_info", _INT_DTYPES, "int32 or int64")
    _check_tensor(t_starts, "t_starts", _FLOAT_DTYPES, floats)
    _check_tensor(t_ends, "t_ends", _FLOAT_DTYPES, floats)
    x_name = "densities" if densities is not None else "alphas"
    x = densities if densities is not None else alphas
    _check_tensor(x, x_name, _FLOAT_DTYPES, floats)
    if values is not None:
        _check_tensor(values, "values", _FLOAT_DTYPES, floats)
    if packed_info.dim() != 2 or packed_info.shape[1] != 2:
        raise ValueError(f"composite: packed_info must be [R, 2] (start, count), got shape "
                         f"{tuple(packed_info.shape)}")
    if t_starts.dim() != 1:
        raise ValueError(f"composite: t_starts must be [S], got shape {tuple(t_starts.shape)}")
    S = t_starts.shape[0]
    for name, t in (("t_ends", t_ends), (x_name, x)):
        if tuple(t.shape) != (S,):
            raise ValueError(f"composite: {name} must be [S] = [{S}] like t_starts, got shape {tuple(t.shape)}")
    if values is not None and (values.dim() != 2 or values.shape[0] != S):
        raise ValueError(f"composite: values must be [S, C] with S = {S}, got shape {tuple(values.shape)}")
    for name, t in (("packed_info", packed_info), ("t_ends", t_ends), (x_name, x), ("values", values)):
        if t is not None and t.device != t_starts.device:
            raise ValueError(f"composite: {name} is on {t.device} but t_starts on {t_starts.device}")


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
            with the device, which on a GPU costs more than the kernels at 2^20 samples; pass
            False for packed_info from ``pack_info`` or a ray marcher in a hot loop. Unchecked,
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
    check_inputs(packed_info, t_starts, t_ends, densities, alphas, values)
    if validate:
        check_packed_info(packed_info, t_starts.shape[0])
    alpha_mode = alphas is not None
    x = alphas if alpha_mode else densities
    floats = [t_starts, t_ends, x] + ([values] if values is not None else [])
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in floats) else torch.float32
    # resolve once here, so errors surface at the call and backward runs the same backend
    name = _dispatch.select(OP, t_starts.device, backend, dtypes=(dtype,)).name
    S = t_starts.shape[0]
    v = values if values is not None else t_starts.new_empty(S, 0)
    out = torch.ops.pyengine.composite_fwd(
        packed_info.to(torch.int64).contiguous(), t_starts.to(dtype).contiguous(),
        t_ends.to(dtype).contiguous(), x.to(dtype).contiguous(), v.to(dtype).contiguous(),
        alpha_mode, name)
    return CompositeResult(*out)


def pack_info(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """packed_info [n_rays, 2] (start, count) of samples sorted by ray.

    Args:
        ray_indices: [S] int, the ray of each sample, non-decreasing, in [0, n_rays).
        n_rays: R, the number of rays (rays without samples get count 0).

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
    if idx.numel() > 0:
        unsorted = idx[1:] < idx[:-1]
        lo, hi, bad = torch.stack([idx.min(), idx.max(), unsorted.any().long()]).tolist()
        if bad:
            i = int(torch.nonzero(unsorted)[0, 0])
            raise ValueError(f"pack_info: ray_indices must be sorted (non-decreasing); "
                             f"ray_indices[{i}] = {int(idx[i])} > ray_indices[{i + 1}] = {int(idx[i + 1])}")
        if lo < 0 or hi >= n_rays:
            raise ValueError(f"pack_info: ray_indices must lie in [0, n_rays) = [0, {n_rays}), "
                             f"got values in [{lo}, {hi}]")
    counts = torch.bincount(idx, minlength=n_rays)
    return torch.stack([torch.cumsum(counts, 0) - counts, counts], -1)
