"""hash_encode: every backend against the reference, forward, backward and double backward."""

import math
import warnings

import pytest
import torch

import pyengine
from pyengine import _ext
from pyengine.ops import _dispatch
from pyengine.ops.hash_encode import hash_encode
from pyengine.reference import hash_encode as ref_mod
from pyengine.reference.hash_encode import PRIMES, HashGridConfig, hash_grid_layout
from tests.helpers import assert_close

# backends that run on CPU tensors here; Triton only under its interpreter (no GPU)
CPU_BACKENDS = ["cpu"] + (["triton"] if _dispatch.triton_interpret() else [])
# A small grid with both dense (coarse) and hashed (fine) levels.
SMALL = dict(n_levels=5, log2_hashmap_size=9, base_resolution=3, per_level_scale=1.9)
FP32_TOL = dict(atol=2e-5, rtol=1e-4)
GRADCHECK_EPS, GRADCHECK_ATOL = 1e-6, 1e-5


def make(D=3, F=2, interp="linear", N=97, dtype=torch.float32, pdtype=None, seed=None, batch=None, **kw):
    cfg = HashGridConfig(n_input_dims=D, n_features_per_level=F, interpolation=interp, **{**SMALL, **kw})
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    shape = (batch if batch is not None else (N,)) + (D,)
    x = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    p = (torch.rand(cfg.n_params(), generator=g, dtype=torch.float64) * 2 - 1).to(pdtype or dtype)
    return cfg, x, p, g


def ref(x, p, cfg):
    return ref_mod.hash_encode(x, p, cfg)


def grads(fn, x, p, g_out, g):
    """(y, dx, dp, and the double-backward grads of <gg, dx> + <ggp, dp> w.r.t. x, p, g_out)."""
    x = x.detach().clone().requires_grad_()
    p = p.detach().clone().requires_grad_()
    go = g_out.detach().clone().requires_grad_()
    y = fn(x, p)
    dx, dp = torch.autograd.grad(y, (x, p), go, create_graph=True)
    gg = torch.randn(dx.shape, generator=g, dtype=torch.float64).to(dx.dtype)
    ggp = torch.randn(dp.shape, generator=g, dtype=torch.float64).to(dp.dtype) * 1e-1
    ddx, ddp, ddgo = torch.autograd.grad((dx * gg).sum() + (dp * ggp).sum(), (x, p, go))
    return y, dx, dp, ddx, ddp, ddgo


# --------------------------------------------------------------------------------- semantics


def test_layout_matches_tcnn_formula():
    cfg = HashGridConfig(n_input_dims=3, n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
                         base_resolution=16, per_level_scale=1.447269)
    lay = hash_grid_layout(cfg)
    offset = 0
    for level in range(16):
        scale = 16 * 2 ** (level * math.log2(1.447269)) - 1
        res = math.ceil(scale) + 1
        size = min(((res**3 + 7) // 8) * 8, 2**19)
        assert lay.resolutions[level] == res
        assert lay.offsets[level] == offset
        assert lay.hashed[level] == (res**3 > size)
        offset += size
    assert lay.n_params == offset
    assert cfg.n_params() == offset * 2
    assert lay.resolutions[0] == 16 and lay.hashed[0] is False and lay.hashed[-1] is True


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_index_and_weights_by_hand(backend):
    """Feature f of entry i holds i * 8 + f, so the output reveals which entries were read."""
    cfg = HashGridConfig(n_input_dims=2, n_levels=2, n_features_per_level=1, log2_hashmap_size=4,
                         base_resolution=3, per_level_scale=2.0)
    lay = hash_grid_layout(cfg)
    assert lay.hashed == (False, True)
    p = torch.arange(cfg.n_params(), dtype=torch.float32)
    x = torch.tensor([[0.3, 0.7], [0.05, 0.95]])
    out = hash_encode(x, p, cfg, backend=backend)
    for n in range(2):
        for level in range(2):
            scale, res = lay.scales[level], lay.resolutions[level]
            size = lay.sizes()[level]
            u = [x[n, d].item() * scale + 0.5 for d in range(2)]
            base = [math.floor(v) for v in u]
            t = [v - b for v, b in zip(u, base)]
            want = 0.0
            for c in range(4):
                pos = [base[d] + ((c >> d) & 1) for d in range(2)]
                if lay.hashed[level]:
                    idx = ((pos[0] * PRIMES[0]) ^ (pos[1] * PRIMES[1])) % 2**32
                else:
                    idx = pos[0] + pos[1] * res
                w = math.prod(t[d] if (c >> d) & 1 else 1 - t[d] for d in range(2))
                want += w * (lay.offsets[level] + idx % size)
            assert abs(out[n, level].item() - want) < 1e-3 * max(1.0, abs(want)), (n, level)


# --------------------------------------------------------------------------------- forward / backward

CASES = [
    # (D, F, interp) — every D and F at least once, both interpolations
    (2, 1, "linear"), (2, 8, "smoothstep"), (3, 2, "linear"), (3, 2, "smoothstep"),
    (3, 4, "linear"), (4, 2, "smoothstep"), (4, 1, "linear"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("D,F,interp", CASES)
def test_forward_backward_double_backward(backend, D, F, interp):
    cfg, x, p, g = make(D, F, interp, N=61 if backend == "triton" else 123)
    x = torch.cat([x, torch.tensor([[-0.2] + [1.3] * (D - 1)])])  # one out-of-range point
    g_out = torch.randn(x.shape[0], cfg.n_output_dims, generator=g)
    want = grads(lambda a, b: ref(a, b, cfg), x.double(), p.double(), g_out.double(), torch.Generator().manual_seed(1))
    got = grads(lambda a, b: hash_encode(a, b, cfg, backend=backend), x, p, g_out, torch.Generator().manual_seed(1))
    names = ["out", "d_positions", "d_params", "dd_positions", "dd_params", "dd_grad_out"]
    for name, a, b in zip(names, got, want):
        assert a.dtype == torch.float32, name
        # float32 against float64: absolute tolerance relative to the largest value
        atol = FP32_TOL["atol"] * max(1.0, b.abs().max().item())
        assert_close(a, b, atol=atol, rtol=FP32_TOL["rtol"], what=f"{backend} {name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize("batch", [(), (2,), (1, 2), (0,), (3, 0)])
def test_batch_dims_and_empty(backend, batch):
    cfg, x, p, g = make(3, 2, batch=batch)
    x.requires_grad_()
    p.requires_grad_()
    y = hash_encode(x, p, cfg, backend=backend)
    assert y.shape == batch + (cfg.n_output_dims,)
    assert_close(y, ref(x, p, cfg), **FP32_TOL, what="forward")
    dx, dp = torch.autograd.grad(y.sum(), (x, p))
    assert dx.shape == x.shape and dp.shape == p.shape
    if y.numel() == 0:
        assert dp.abs().sum() == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("pdtype", [torch.float16, torch.bfloat16])
def test_low_precision_params(backend, pdtype):
    """Error against float64 at most about twice that of the reference run in the low dtype."""
    cfg, x, p, g = make(3, 2, N=80, pdtype=torch.float64)
    p_low = p.to(pdtype)
    exact = ref(x.double(), p_low.double(), cfg)
    ref_low = ref(x, p_low, cfg)
    got = hash_encode(x, p_low, cfg, backend=backend)
    assert got.dtype == pdtype
    ref_err = (ref_low.double() - exact).abs().max().item()
    err = (got.double() - exact).abs().max().item()
    bound = 2 * ref_err + 1e-6
    if backend == "triton" and _dispatch.triton_interpret() and pdtype == torch.bfloat16:
        # Triton's interpreter casts float32 -> bfloat16 by truncation (compiled Triton rounds to
        # nearest even), so allow it one more bfloat16 ulp of the largest output.
        bound += torch.finfo(pdtype).eps * exact.abs().max().item()
    assert err <= bound, f"{backend}: err {err:.3e} vs reference-in-{pdtype} {ref_err:.3e}"
    xg = x.clone().requires_grad_()
    pg = p_low.clone().requires_grad_()
    g_out = torch.randn(got.shape, generator=g).to(pdtype)
    dx, dp = torch.autograd.grad(hash_encode(xg, pg, cfg, backend=backend), (xg, pg), g_out)
    rdx, rdp = torch.autograd.grad(ref(xg.double(), pg.double(), cfg), (xg, pg), g_out.double())
    assert dp.dtype == pdtype and dx.dtype == torch.float32
    tol = 1e-2 if pdtype == torch.bfloat16 else 2e-3
    assert_close(dp.float(), rdp.float(), atol=tol, rtol=tol, what="d_params")
    assert_close(dx, rdx.float(), atol=tol * 30, rtol=tol * 10, what="d_positions")


@pytest.mark.parametrize("interp", ["linear", "smoothstep"])
def test_gradcheck_cpu_and_reference(interp):
    cfg, x, p, g = make(3, 2, interp, N=6, dtype=torch.float64, n_levels=2, log2_hashmap_size=5)
    # keep points away from cell borders, where the linear gradient jumps
    x = x * 0.9 + 0.05
    for backend in ("reference", "cpu"):
        fn = lambda a, b: hash_encode(a, b, cfg, backend=backend)  # noqa: E731
        inputs = (x.clone().requires_grad_(), p.clone().requires_grad_())
        assert torch.autograd.gradcheck(fn, inputs, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL)
    if interp == "smoothstep":  # (the reference's double backward is autograd's own)
        cfg2, x2, p2, _ = make(3, 2, interp, N=4, dtype=torch.float64, n_levels=2, log2_hashmap_size=5)
        fn = lambda a, b: hash_encode(a, b, cfg2, backend="cpu")  # noqa: E731
        inputs = (x2.mul(0.9).add(0.05).requires_grad_(), p2.requires_grad_())
        assert torch.autograd.gradgradcheck(fn, inputs, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL)


def test_gradgradcheck_linear_cpu():
    """Linear interpolation: the Hessian is piecewise constant but its cross terms are not zero."""
    cfg, x, p, g = make(2, 2, "linear", N=5, dtype=torch.float64, n_levels=2, log2_hashmap_size=6,
                        base_resolution=2, per_level_scale=1.5)
    fn = lambda a, b: hash_encode(a, b, cfg, backend="cpu")  # noqa: E731
    inputs = (x.clone().requires_grad_(), p.clone().requires_grad_())
    assert torch.autograd.gradgradcheck(fn, inputs, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_out_of_range_is_clamped(backend):
    cfg, x, p, g = make(3, 2, "smoothstep", N=40)
    off = x.clone()
    off[:10, 0] = -0.5 - torch.rand(10, generator=g)
    off[10:20, 1] = 1.5 + torch.rand(10, generator=g)
    off[20, 2] = float("nan")
    clamped = off.nan_to_num(0.0).clamp(0, 1)
    assert_close(hash_encode(off, p, cfg, backend=backend), hash_encode(clamped, p, cfg, backend=backend),
                 atol=1e-6, rtol=0, what="clamped")
    xg = off.clone().requires_grad_()
    (dx,) = torch.autograd.grad(hash_encode(xg, p, cfg, backend=backend).sum(), xg)
    assert torch.isfinite(dx).all()
    assert (dx[:10, 0] == 0).all() and (dx[10:20, 1] == 0).all() and dx[20, 2] == 0
    assert (dx[:10, 1:] != 0).any(), "in-range coordinates must keep their gradient"


# --------------------------------------------------------------------------------- checks & dispatch


def test_bad_inputs_raise_clear_errors():
    cfg, x, p, g = make(3, 2)
    with pytest.raises(ValueError, match=r"positions must be \[\.\.\., 3\]"):
        hash_encode(x[:, :2], p, cfg)
    with pytest.raises(TypeError, match="positions must be float32 or float64"):
        hash_encode((x * 10).int(), p, cfg)
    with pytest.raises(TypeError, match="params must be float16"):
        hash_encode(x, p.int(), cfg)
    with pytest.raises(ValueError, match="params must be 1-D with"):
        hash_encode(x, p[:-1], cfg)
    with pytest.raises(ValueError, match="params must be 1-D with"):
        hash_encode(x, p.reshape(-1, 2), cfg)
    with pytest.raises(ValueError, match="positions are on cpu but params on meta"):
        hash_encode(x, p.to("meta"), cfg)
    with pytest.raises(TypeError, match="config must be a HashGridConfig"):
        hash_encode(x, p, {"n_levels": 5})
    with pytest.raises(ValueError, match="n_features_per_level"):
        HashGridConfig(n_features_per_level=3)
    with pytest.raises(ValueError, match="interpolation"):
        HashGridConfig(interpolation="nearest")
    with pytest.raises(ValueError, match="n_input_dims"):
        HashGridConfig(n_input_dims=5)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        hash_encode(x, p, cfg, backend="fast")
    with pytest.raises(pyengine.BackendError, match="'cuda'.*CUDA tensors"):
        hash_encode(x, p, cfg, backend="cuda")
    reason = "float64" if _dispatch.triton_interpret() else "CUDA tensors"
    with pytest.raises(pyengine.BackendError, match=reason):
        hash_encode(x.double(), p, cfg, backend="triton")


def test_non_contiguous_inputs_are_accepted():
    cfg, x, p, g = make(3, 2, N=50)
    xt = torch.rand(3, 50, generator=g).t()
    assert not xt.is_contiguous()
    p2 = torch.stack([p, p], 1)[:, 0]
    assert not p2.is_contiguous()
    for backend in CPU_BACKENDS:
        assert_close(hash_encode(xt, p2, cfg, backend=backend), ref(xt.contiguous(), p, cfg), **FP32_TOL,
                     what=backend)


def test_dispatch_precedence(monkeypatch):
    cfg, x, p, g = make(3, 2, N=5)
    seen = []
    real = _dispatch.select

    def spy(op, device, backend=None, **facts):
        b = real(op, device, backend, **facts)
        seen.append(b.name)
        return b

    monkeypatch.setattr(_dispatch, "select", spy)
    monkeypatch.delenv("PYENGINE_BACKEND", raising=False)
    hash_encode(x, p, cfg)
    assert seen[-1] == "cpu"  # the CPU default
    with pyengine.use_backend("reference"):
        hash_encode(x, p, cfg)
        assert seen[-1] == "reference"
        monkeypatch.setenv("PYENGINE_BACKEND", "cpu")
        hash_encode(x, p, cfg)
        assert seen[-1] == "cpu"  # environment beats the context
        hash_encode(x, p, cfg, backend="reference")
        assert seen[-1] == "reference"  # the argument beats both
    monkeypatch.setenv("PYENGINE_BACKEND", "cuda")
    with pytest.raises(pyengine.BackendError, match="from PYENGINE_BACKEND"):
        hash_encode(x, p, cfg)


def test_fallback_without_extension_warns_once(monkeypatch):
    cfg, x, p, g = make(3, 2, N=5)
    monkeypatch.setattr(_ext, "_mod", None)
    monkeypatch.setattr(_ext, "_tried", True)
    monkeypatch.setattr(_ext, "_error", "pyengine._C could not be loaded (test)")
    monkeypatch.setattr(_dispatch, "_warned", set())
    monkeypatch.delenv("PYENGINE_BACKEND", raising=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y1 = hash_encode(x, p, cfg)
        y2 = hash_encode(x, p, cfg)
    msgs = [str(m.message) for m in w if "hash_encode" in str(m.message)]
    assert len(msgs) == 1 and "'reference'" in msgs[0] and "could not be loaded (test)" in msgs[0]
    assert_close(y1, ref(x, p, cfg), **FP32_TOL)
    assert torch.equal(y1, y2)
    with pytest.raises(pyengine.BackendError, match="could not be loaded"):
        hash_encode(x, p, cfg, backend="cpu")
    monkeypatch.setattr(_dispatch, "DEFAULT_ORDER", {"cpu": ("cpu",)})
    with pytest.raises(pyengine.BackendError, match=r"no backend can run(.|\n)*cpu: pyengine._C(.|\n)*reference"):
        hash_encode(x, p, cfg)


def test_opcheck():
    cfg, x, p, g = make(3, 2, N=9)
    args = (x, p.requires_grad_(), cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size,
            float(cfg.base_resolution), float(cfg.per_level_scale), cfg.interpolation, cfg.grid_type, "cpu")
    torch.library.opcheck(torch.ops.pyengine.hash_encode.default, args)
    g_out = torch.randn(9, cfg.n_output_dims)
    torch.library.opcheck(torch.ops.pyengine.hash_encode_bwd.default,
                          (g_out, x.requires_grad_(), p.detach(), *args[2:], True, True))


def test_torch_compile_traces_through():
    cfg, x, p, g = make(3, 2, N=9)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(a, b):
        return torch.ops.pyengine.hash_encode(a, b, cfg.n_levels, cfg.n_features_per_level,
                                              cfg.log2_hashmap_size, float(cfg.base_resolution),
                                              float(cfg.per_level_scale), cfg.interpolation, cfg.grid_type,
                                              "cpu").sum(-1)

    assert_close(f(x, p), ref(x, p, cfg).sum(-1), **FP32_TOL)


# --------------------------------------------------------------------------------- GPU


GPU_CASES = [(3, 2, "linear"), (3, 2, "smoothstep"), (2, 4, "linear"), (4, 8, "smoothstep"), (3, 1, "linear")]
# Triton compiles one kernel per case: a few cases keep the GPU check short.
GPU_PARAMS = ([("cuda", dt, *c) for dt in (torch.float32, torch.float16, torch.float64) for c in GPU_CASES]
              + [("triton", dt, *c) for dt in (torch.float32, torch.bfloat16) for c in GPU_CASES[:2]]
              + [("triton", torch.float32, *GPU_CASES[3])])


@pytest.mark.gpu
@pytest.mark.parametrize("backend,pdtype,D,F,interp", GPU_PARAMS)
def test_gpu_backends(backend, pdtype, D, F, interp):
    cfg, x, p, g = make(D, F, interp, N=4099, pdtype=torch.float64, n_levels=8, log2_hashmap_size=14,
                        base_resolution=4, per_level_scale=1.7)
    x = torch.cat([x, torch.tensor([[-0.3] + [1.2] * (D - 1)])]).cuda()
    p = p.to(pdtype).cuda()
    xd = x.double() if pdtype == torch.float64 else x
    g_out = torch.randn(x.shape[0], cfg.n_output_dims, generator=g).cuda()
    want = grads(lambda a, b: ref(a, b, cfg), x.double(), p.double(), g_out.double(), torch.Generator().manual_seed(1))
    got = grads(lambda a, b: hash_encode(a, b, cfg, backend=backend), xd, p, g_out.to(pdtype),
                torch.Generator().manual_seed(1))
    names = ["out", "d_positions", "d_params", "dd_positions", "dd_params", "dd_grad_out"]
    low = pdtype in (torch.float16, torch.bfloat16)
    for name, a, b in zip(names, got, want):
        tol = 2e-2 if low else 1e-4
        assert_close(a.cpu().double(), b.cpu(), atol=tol * max(1.0, b.abs().max().item()), rtol=tol,
                     what=f"{backend} {pdtype} {name}")
