"""``hash_encode``: multiresolution hash encoding (Instant-NGP), with backward and double backward.

``hash_encode()`` checks its inputs and runs the op defined below on the config's layout
(``kernel_args``). Kernels (``pyengine.reference.hash_encode``, ``pyengine._C``,
``pyengine.kernels.hash_encode``): ``hash_encode_fwd(x, params, offsets, scales, resolutions,
hashed_mask, F, interp)``, ``hash_encode_bwd`` and ``hash_encode_bwd_bwd``. The backward is
itself differentiable (analytic normals, eikonal losses): its autograd below calls
``hash_encode_bwd_bwd`` plus the forward and backward with the table replaced by the incoming
gradient.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from pyengine.ops._define import F32_F64, FLOAT, T, check, define
from pyengine.reference import hash_encode as _ref
from pyengine.reference.hash_encode import HashGridConfig, hash_grid_layout

__all__ = ["hash_encode", "HashGridConfig"]

_INTERP = {"linear": 0, "smoothstep": 1}


@lru_cache(maxsize=256)
def kernel_args(cfg: HashGridConfig) -> tuple:
    """(offsets, scales, resolutions, hashed_mask, F, interp): the layout as the kernels take it."""
    lay = hash_grid_layout(cfg)
    mask = sum(1 << i for i, h in enumerate(lay.hashed) if h)
    return (list(lay.offsets), list(lay.scales), list(lay.resolutions), mask, cfg.n_features_per_level,
            _INTERP[cfg.interpolation])


_LAYOUT = "int[] offsets, float[] scales, int[] resolutions, int hashed_mask, int F, int interp"

# On GPUs Triton comes first: on an H200 (bench/RESULTS.md, commit e848364), 2^20 points, standard
# grid, forward + backward took 2.73 ms with Triton against 3.14 ms with CUDA in float32 (2.54
# against 2.61 ms with float16 tables); Triton's forward is the faster one (0.97 against 1.38 ms),
# the backward ties. Both passed the GPU tests there. Those CUDA figures predate the tiled CUDA
# kernels (rows staged in shared memory and stored coalesced, vector row loads, an atomic-free
# dL/dx), which have not run on a GPU yet: the order stays until they are timed side by side.
OP = define(
    "hash_encode", f"(Tensor x, Tensor params, {_LAYOUT}) -> Tensor", grads=("params", "x"),
    fake=lambda x, params, offsets, scales, *a: x.new_empty((x.shape[0], len(scales) * a[-2]), dtype=params.dtype),
    reference=_ref, cpu=True, cuda=True, triton="pyengine.kernels.hash_encode",
    triton_dtypes=(torch.float16, torch.bfloat16, torch.float32), gpu_order=("triton", "cuda", "reference"))

_bwd_bwd = OP.kernel(
    "hash_encode_bwd_bwd",
    f"(Tensor gg_x, Tensor grad_out, Tensor x, Tensor params, {_LAYOUT}, bool need_grad_out, bool need_x, "
    "bool need_params) -> (Tensor, Tensor, Tensor)",
    fake=lambda gg, go, x, p, *a: tuple(torch.empty_like(t) if n else t.new_empty(0)
                                        for t, n in zip((go, x, p), a[-3:])),
    derive=_ref.hash_encode_bwd_bwd,
    post=lambda args, got: tuple(g if (g is not None and n) else t.new_empty(0)
                                 for g, t, n in zip(got, args[1:4], args[-3:])))


# The double backward: autograd of hash_encode_bwd(grad_out, x, params, *layout, need_params,
# need_x, backend) -> (grad_params, grad_x).

def _bwd_setup(ctx, inputs, output):
    grad_out, x, params, *rest = inputs
    ctx.save_for_backward(grad_out, x, params)
    ctx.layout, ctx.backend = rest[:6], rest[-1]


def _defined(t):
    return t is not None and t.numel() > 0


def _bwd_backward(ctx, gg_params, gg_x):
    grad_out, x, params = ctx.saved_tensors
    n_go, n_x, n_p = ctx.needs_input_grad[:3]
    d_go = d_x = d_p = None
    if _defined(gg_x) and (n_go or n_x or n_p):
        a, b, c = _bwd_bwd(gg_x.contiguous(), grad_out, x, params, *ctx.layout, n_go, n_x, n_p, ctx.backend)
        d_go, d_x, d_p = (a if n_go else None), (b if n_x else None), (c if n_p else None)
    if _defined(gg_params):
        # dtable = sum_c w_c(x) g  is linear in g and in the table: its gradient is the forward and
        # the input-backward with the table replaced by gg_params.
        gg_params = gg_params.to(params.dtype)
        if n_go:
            t = OP.fwd(x, gg_params, *ctx.layout, ctx.backend).to(grad_out.dtype)
            d_go = t if d_go is None else d_go + t
        if n_x:
            _, t = torch.ops.pyengine.hash_encode_bwd(grad_out, x, gg_params, *ctx.layout, False, True, ctx.backend)
            d_x = t if d_x is None else d_x + t
    return (d_go, d_x, d_p) + (None,) * (len(ctx.layout) + 3)


OP.double_backward(_bwd_backward, _bwd_setup)


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
    if not isinstance(config, HashGridConfig):
        raise TypeError(f"hash_encode: config must be a HashGridConfig, got {type(config).__name__}")
    check("hash_encode", {"positions": T(F32_F64, "... D"), "params": T(FLOAT, "P")},
          {"positions": positions, "params": params}, D=config.n_input_dims, P=config.n_params())
    batch = positions.shape[:-1]
    x = positions.reshape(-1, config.n_input_dims).contiguous()
    out = OP(x, params.contiguous(), *kernel_args(config), backend=backend)
    return out.reshape(*batch, config.n_output_dims)
