"""``hash_encode``: multiresolution hash encoding (Instant-NGP), with backward and double backward.

Layers: ``hash_encode()`` checks inputs and picks a backend name, then calls the registered op
``torch.ops.pyengine.hash_encode``; its autograd calls ``hash_encode_bwd``, whose own autograd
(the double backward, for analytic normals and eikonal losses) calls ``hash_encode_bwd_bwd``
plus the forward and backward with the table replaced by the incoming gradient.

Backends share one signature (that of the compiled ``_C.hash_encode_*`` functions):
``fwd(x, params, offsets, scales, resolutions, hashed_mask, F, interp)`` and so on.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import torch

from pyengine import _ext
from pyengine.ops import _dispatch
from pyengine.reference import hash_encode as _ref
from pyengine.reference.hash_encode import HashGridConfig, hash_grid_layout

__all__ = ["hash_encode", "HashGridConfig"]

OP = "hash_encode"
_PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INTERP = {"linear": 0, "smoothstep": 1}


@lru_cache(maxsize=256)
def _kernel_args(cfg: HashGridConfig):
    lay = hash_grid_layout(cfg)
    mask = sum(1 << i for i, h in enumerate(lay.hashed) if h)
    return (list(lay.offsets), list(lay.scales), list(lay.resolutions), mask,
            cfg.n_features_per_level, _INTERP[cfg.interpolation])


# Reference backend with the compiled functions' signatures, derived by autograd ----------------

def _ref_backend(cfg: HashGridConfig):
    f = lambda x, p: _ref.hash_encode(x, p, cfg)  # noqa: E731

    def fwd(x, params):
        return f(x, params)

    # torch.func rather than torch.autograd: these run inside the custom op, below the autograd
    # dispatch key, where the tape would record nothing.
    def bwd(grad_out, x, params, need_params, need_x):
        _, vjp = torch.func.vjp(f, x, params)
        gx, gp = vjp(grad_out.to(params.dtype))
        return (gp if need_params else None, gx if need_x else None)

    def bwd_bwd(gg_x, grad_out, x, params, need_grad_out, need_x, need_params):
        def dx_of(go, xs, ps):
            return torch.func.vjp(f, xs, ps)[1](go)[0]

        _, vjp = torch.func.vjp(dx_of, grad_out.to(params.dtype), x, params)
        d_go, d_x, d_p = vjp(gg_x.to(x.dtype))
        return (d_go if need_grad_out else None, d_x if need_x else None, d_p if need_params else None)

    return SimpleNamespace(fwd=fwd, bwd=bwd, bwd_bwd=bwd_bwd)


def _compiled_backend(mod, cfg: HashGridConfig):
    """Wraps a module of C-style functions (pyengine._C or pyengine.kernels.hash_encode)."""
    a = _kernel_args(cfg)
    return SimpleNamespace(
        fwd=lambda x, p: mod.hash_encode_fwd(x, p, *a),
        bwd=lambda g, x, p, need_p, need_x: mod.hash_encode_bwd(g, x, p, *a, need_p, need_x),
        bwd_bwd=lambda gg, g, x, p, n_go, n_x, n_p: mod.hash_encode_bwd_bwd(gg, g, x, p, *a, n_go, n_x, n_p),
    )


def _triton_module():
    from pyengine.kernels import hash_encode as mod

    return mod


_dispatch.register(OP, "reference", lambda device, dtypes=(): None, lambda cfg: _ref_backend(cfg))
_dispatch.register(OP, "cpu", lambda device, dtypes=(): _dispatch.check_cpu_ext(device),
                   lambda cfg: _compiled_backend(_ext.load(), cfg))
_dispatch.register(OP, "cuda", lambda device, dtypes=(): _dispatch.check_cuda_ext(device),
                   lambda cfg: _compiled_backend(_ext.load(), cfg))
# On GPUs Triton comes first for now: its kernel has been checked against the reference on an H100
# (bench/RESULTS.md) while the CUDA kernel has only been compiled. Revisit once
# bench/gpu_check.sh has timed both.
_dispatch.set_order(OP, "cuda", ("triton", "cuda", "reference"))
_dispatch.register(OP, "triton", _dispatch.check_triton_float32, lambda cfg: _compiled_backend(_triton_module(), cfg))


def _backend(name: str, x: torch.Tensor, params: torch.Tensor, cfg: HashGridConfig):
    b = _dispatch.select(OP, x.device, None if name == "auto" else name, dtypes=(x.dtype, params.dtype))
    return b.impl(cfg)


# Registered ops ----------------------------------------------------------------------------------
# The config travels as plain scalars so that the schema stays simple for torch.compile.

def _cfg(D, n_levels, F, log2_T, base, pls, interp, grid_type) -> HashGridConfig:
    return HashGridConfig(D, n_levels, F, log2_T, base, pls, interp, grid_type)


@torch.library.custom_op("pyengine::hash_encode", mutates_args=())
def _hash_encode_op(positions: torch.Tensor, params: torch.Tensor, n_levels: int,
                    n_features_per_level: int, log2_hashmap_size: int, base_resolution: float,
                    per_level_scale: float, interpolation: str, grid_type: str,
                    backend: str) -> torch.Tensor:
    cfg = _cfg(positions.shape[-1], n_levels, n_features_per_level, log2_hashmap_size,
               base_resolution, per_level_scale, interpolation, grid_type)
    return _backend(backend, positions, params, cfg).fwd(positions, params)


@_hash_encode_op.register_fake
def _(positions, params, n_levels, n_features_per_level, *args):
    return positions.new_empty((positions.shape[0], n_levels * n_features_per_level), dtype=params.dtype)


@torch.library.custom_op("pyengine::hash_encode_bwd", mutates_args=())
def _hash_encode_bwd_op(grad_out: torch.Tensor, positions: torch.Tensor, params: torch.Tensor,
                        n_levels: int, n_features_per_level: int, log2_hashmap_size: int,
                        base_resolution: float, per_level_scale: float, interpolation: str,
                        grid_type: str, backend: str, need_params: bool,
                        need_positions: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (grad_params, grad_positions); a gradient not asked for is an empty tensor."""
    cfg = _cfg(positions.shape[-1], n_levels, n_features_per_level, log2_hashmap_size,
               base_resolution, per_level_scale, interpolation, grid_type)
    gp, gx = _backend(backend, positions, params, cfg).bwd(
        grad_out.contiguous(), positions, params, need_params, need_positions)
    return (gp if gp is not None else params.new_empty(0),
            gx if gx is not None else positions.new_empty(0))


@_hash_encode_bwd_op.register_fake
def _(grad_out, positions, params, *args):
    need_params, need_positions = args[-2], args[-1]
    return (torch.empty_like(params) if need_params else params.new_empty(0),
            torch.empty_like(positions) if need_positions else positions.new_empty(0))


@torch.library.custom_op("pyengine::hash_encode_bwd_bwd", mutates_args=())
def _hash_encode_bwd_bwd_op(gg_positions: torch.Tensor, grad_out: torch.Tensor,
                            positions: torch.Tensor, params: torch.Tensor, n_levels: int,
                            n_features_per_level: int, log2_hashmap_size: int,
                            base_resolution: float, per_level_scale: float, interpolation: str,
                            grid_type: str, backend: str, need_grad_out: bool,
                            need_positions: bool,
                            need_params: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Terms of the double backward that flow through grad_positions (empty when not asked)."""
    cfg = _cfg(positions.shape[-1], n_levels, n_features_per_level, log2_hashmap_size,
               base_resolution, per_level_scale, interpolation, grid_type)
    dgo, dx, dp = _backend(backend, positions, params, cfg).bwd_bwd(
        gg_positions.contiguous(), grad_out.contiguous(), positions, params,
        need_grad_out, need_positions, need_params)
    return (dgo if dgo is not None else grad_out.new_empty(0),
            dx if dx is not None else positions.new_empty(0),
            dp if dp is not None else params.new_empty(0))


@_hash_encode_bwd_bwd_op.register_fake
def _(gg_positions, grad_out, positions, params, *args):
    n_go, n_x, n_p = args[-3:]
    return (torch.empty_like(grad_out) if n_go else grad_out.new_empty(0),
            torch.empty_like(positions) if n_x else positions.new_empty(0),
            torch.empty_like(params) if n_p else params.new_empty(0))


# Autograd ----------------------------------------------------------------------------------------

def _fwd_setup(ctx, inputs, output):
    positions, params, *cfg = inputs
    ctx.save_for_backward(positions, params)
    ctx.cfg = cfg  # n_levels, ..., grid_type, backend


def _fwd_backward(ctx, grad):
    positions, params = ctx.saved_tensors
    need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx = gp = None
    if need_x or need_p:
        gp, gx = torch.ops.pyengine.hash_encode_bwd(grad, positions, params, *ctx.cfg, need_p, need_x)
    return (gx if need_x else None, gp if need_p else None) + (None,) * len(ctx.cfg)


def _bwd_setup(ctx, inputs, output):
    grad_out, positions, params, *rest = inputs
    ctx.save_for_backward(grad_out, positions, params)
    ctx.cfg = rest[:-2]


def _defined(t):
    return t is not None and t.numel() > 0


def _bwd_backward(ctx, gg_params, gg_positions):
    grad_out, positions, params = ctx.saved_tensors
    n_go, n_x, n_p = ctx.needs_input_grad[:3]
    d_go = d_x = d_p = None
    if _defined(gg_positions) and (n_go or n_x or n_p):
        a, b, c = torch.ops.pyengine.hash_encode_bwd_bwd(gg_positions, grad_out, positions, params,
                                                         *ctx.cfg, n_go, n_x, n_p)
        d_go, d_x, d_p = (a if n_go else None), (b if n_x else None), (c if n_p else None)
    if _defined(gg_params):
        # dtable = sum_c w_c(x) g  is linear in g and in the table: its gradient is the forward and
        # the input-backward with the table replaced by gg_params.
        gg_params = gg_params.to(params.dtype)
        if n_go:
            t = torch.ops.pyengine.hash_encode(positions, gg_params, *ctx.cfg).to(grad_out.dtype)
            d_go = t if d_go is None else d_go + t
        if n_x:
            _, t = torch.ops.pyengine.hash_encode_bwd(grad_out, positions, gg_params, *ctx.cfg, False, True)
            d_x = t if d_x is None else d_x + t
    return (d_go, d_x, d_p) + (None,) * (len(ctx.cfg) + 2)


torch.library.register_autograd("pyengine::hash_encode", _fwd_backward, setup_context=_fwd_setup)
torch.library.register_autograd("pyengine::hash_encode_bwd", _bwd_backward, setup_context=_bwd_setup)


# Public function ---------------------------------------------------------------------------------

def check_inputs(positions, params, cfg: HashGridConfig):
    """Raises TypeError / ValueError naming the argument when the inputs do not fit ``cfg``."""
    if not isinstance(cfg, HashGridConfig):
        raise TypeError(f"hash_encode: config must be a HashGridConfig, got {type(cfg).__name__}")
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"hash_encode: positions must be a torch.Tensor, got {type(positions).__name__}")
    if not isinstance(params, torch.Tensor):
        raise TypeError(f"hash_encode: params must be a torch.Tensor, got {type(params).__name__}")
    if positions.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"hash_encode: positions must be float32 or float64, got {positions.dtype}")
    if params.dtype not in _PARAM_DTYPES:
        raise TypeError(f"hash_encode: params must be float16, bfloat16, float32 or float64, got {params.dtype}")
    if positions.dim() < 1 or positions.shape[-1] != cfg.n_input_dims:
        raise ValueError(f"hash_encode: positions must be [..., {cfg.n_input_dims}] "
                         f"(config.n_input_dims), got shape {tuple(positions.shape)}")
    if params.dim() != 1 or params.numel() != cfg.n_params():
        raise ValueError(f"hash_encode: params must be 1-D with {cfg.n_params()} values for this config, "
                         f"got shape {tuple(params.shape)}")
    if positions.device != params.device:
        raise ValueError(f"hash_encode: positions are on {positions.device} but params on {params.device}")


def hash_encode(positions: torch.Tensor, params: torch.Tensor, config: HashGridConfig,
                *, backend: str | None = None) -> torch.Tensor:
    """Multiresolution hash encoding of positions in the unit cube.

    Args:
        positions: [..., D] float32 or float64 in [0, 1] (clamped outside; zero gradient there).
        params: [config.n_params()] flat table, float16 / bfloat16 / float32 / float64.
        config: grid hyper-parameters (tiny-cuda-nn semantics, see ``HashGridConfig``).
        backend: "cuda", "triton", "cpu" or "reference"; default: automatic (see ``_dispatch``).

    Returns:
        [..., L * F] features in ``params.dtype``. Differentiable w.r.t. positions and params,
        twice (the gradient w.r.t. positions is itself differentiable).

    Example:
        >>> cfg = HashGridConfig(n_input_dims=3, n_levels=8, log2_hashmap_size=14)
        >>> params = (torch.rand(cfg.n_params()) * 2 - 1) * 1e-4
        >>> hash_encode(torch.rand(4, 5, 3), params, cfg).shape
        torch.Size([4, 5, 16])
    """
    cfg = config
    check_inputs(positions, params, cfg)
    # resolve once here, so errors surface at the call and backward runs the same backend
    name = _dispatch.select(OP, positions.device, backend, dtypes=(positions.dtype, params.dtype)).name
    batch = positions.shape[:-1]
    x = positions.reshape(-1, cfg.n_input_dims).contiguous()
    out = torch.ops.pyengine.hash_encode(
        x, params.contiguous(), cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size,
        float(cfg.base_resolution), float(cfg.per_level_scale), cfg.interpolation, cfg.grid_type, name)
    return out.reshape(*batch, cfg.n_output_dims)
