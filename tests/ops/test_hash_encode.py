"""hash_encode: every backend against the reference, forward, backward and double backward."""

import math
import warnings

import pytest
import torch

import pyengine
from pyengine import _ext
from pyengine.ops import _dispatch
from pyengine.ops import hash_encode as hash_encode_mod
from pyengine.ops.hash_encode import hash_encode
from pyengine.reference import hash_encode as ref_mod
from pyengine.reference.hash_encode import PRIMES, HashGridConfig, hash_grid_layout
from tests.helpers import assert_close
from tests.op_harness import HAS_CUDA, Bad, Case, OpSuite, change

# backends that run on CPU tensors here; Triton only under its interpreter (no GPU)
CPU_BACKENDS = ["cpu"] + (["triton"] if _dispatch.triton_interpret() and not HAS_CUDA else [])
# (backend, device) pairs for the tests below that the harness does not cover
BACKEND_DEVICES = ([("cpu", "cpu")] + [("triton", "cpu")] * ("triton" in CPU_BACKENDS)
                   + [pytest.param(b, "cuda", marks=pytest.mark.gpu) for b in ("cuda", "triton")])
# A small grid with both dense (coarse) and hashed (fine) levels.
SMALL = dict(n_levels=5, log2_hashmap_size=9, base_resolution=3, per_level_scale=1.9)
FP32_TOL = dict(atol=2e-5, rtol=1e-4)
GRADCHECK_EPS, GRADCHECK_ATOL = 1e-6, 1e-5


def make(D=3, F=2, interp="linear", N=97, dtype=torch.float32, pdtype=None, seed=0, batch=None, **kw):
    cfg = HashGridConfig(n_input_dims=D, n_features_per_level=F, interpolation=interp, **{**SMALL, **kw})
    g = torch.Generator().manual_seed(seed)
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
    gg = torch.randn(dx.shape, generator=g, dtype=torch.float64).to(dx)
    ggp = torch.randn(dp.shape, generator=g, dtype=torch.float64).to(dp) * 1e-1
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


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
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


# --------------------------------------------------------------------------------- double backward

DOUBLE_CASES = [
    # (D, F, interp) — every D and F at least once, both interpolations
    (2, 1, "linear"), (2, 8, "smoothstep"), (3, 2, "linear"), (3, 2, "smoothstep"),
    (3, 4, "linear"), (4, 2, "smoothstep"), (4, 1, "linear"),
]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("D,F,interp", DOUBLE_CASES)
def test_double_backward_against_reference(backend, device, D, F, interp):
    if backend == "triton" and device == "cpu" and DOUBLE_CASES.index((D, F, interp)) % 2:
        pytest.skip("Triton's interpreter is slow: it runs four of the seven cases")
    seed = D * 100 + F * 10 + len(interp)
    cfg, x, p, g = make(D, F, interp, N=61 if backend == "triton" else 123, seed=seed)
    x = torch.cat([x, torch.tensor([[-0.2] + [1.3] * (D - 1)])])  # one out-of-range point
    g_out = torch.randn(x.shape[0], cfg.n_output_dims, generator=g)
    want = grads(lambda a, b: ref(a, b, cfg), x.double(), p.double(), g_out.double(), torch.Generator().manual_seed(1))
    x, p, g_out = x.to(device), p.to(device), g_out.to(device)
    got = grads(lambda a, b: hash_encode(a, b, cfg, backend=backend), x, p, g_out, torch.Generator().manual_seed(1))
    names = ["out", "d_positions", "d_params", "dd_positions", "dd_params", "dd_grad_out"]
    for name, a, b in zip(names, got, want):
        assert a.dtype == torch.float32, name
        # float32 against float64: absolute tolerance relative to the largest value
        atol = FP32_TOL["atol"] * max(1.0, b.abs().max().item())
        assert_close(a.cpu(), b, atol=atol, rtol=FP32_TOL["rtol"], what=f"{backend} {name} seed={seed}")


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


def test_the_most_levels_match_the_reference():
    """n_levels = 32, as many as the kernels' level table holds (the host once wrote one entry past
    that table, which zeroed level 0's scale)."""
    cfg, x, p, _ = make(3, 2, N=37, n_levels=32, log2_hashmap_size=7, base_resolution=2, per_level_scale=1.3)
    assert_close(hash_encode(x, p, cfg, backend="cpu"), ref(x, p, cfg), **FP32_TOL)


def test_config_errors():
    with pytest.raises(ValueError, match="n_features_per_level"):
        HashGridConfig(n_features_per_level=3)
    with pytest.raises(ValueError, match="interpolation"):
        HashGridConfig(interpolation="nearest")
    with pytest.raises(ValueError, match="n_input_dims"):
        HashGridConfig(n_input_dims=5)


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
    monkeypatch.delenv("PYENGINE_BACKEND")
    with pyengine.use_backend("cuda"), pytest.raises(pyengine.BackendError, match=r"from pyengine.use_backend\(\)"):
        hash_encode(x, p, cfg)  # the context is strict, like the argument
    # the environment is a preference: an op that cannot run it chooses automatically, with one warning
    monkeypatch.setenv("PYENGINE_BACKEND", "cuda")
    monkeypatch.setattr(_dispatch, "_warned", set())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        hash_encode(x, p, cfg)
        hash_encode(x, p, cfg)
    assert seen[-1] == "cpu"
    msgs = [str(m.message) for m in w if "PYENGINE_BACKEND" in str(m.message)]
    assert len(msgs) == 1 and "'cuda'" in msgs[0] and "CUDA tensors" in msgs[0], msgs


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


# --------------------------------------------------------------------------------- the harness


def _case(D, F, interp, N=97, batch=None, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16),
          name=None, triton=True, cpu=True, **kw):
    """The dtype is the table's; positions are float32 (float64 with a float64 table)."""
    def make_(g, dtype, device):
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        cfg, x, p, _ = make(D, F, interp, N=N, batch=batch, pdtype=dtype, seed=seed, **kw)
        x = x.double() if dtype == torch.float64 else x
        return (x.to(device), p.to(device), cfg), {}

    shape = "x".join(map(str, batch)) if batch is not None else str(N)
    return Case(name or f"D{D}-F{F}-{interp}-{shape}", make_, dtypes=dtypes, triton=triton, cpu=cpu)


# Triton's interpreter is slow: it runs four of the seven (D, F, interp) cases.
CASES = ([_case(D, F, i, triton=n % 2 == 0) for n, (D, F, i) in enumerate(DOUBLE_CASES)]
         + [_case(3, 2, "linear", batch=b, name=f"batch{b}") for b in [(), (2,), (1, 2), (0,), (3, 0)]]
         + [_case(3, 2, "linear", N=4099, n_levels=8, log2_hashmap_size=14, base_resolution=4, per_level_scale=1.7,
                  cpu=False, name="gpu-sized")])


def _base(g, device):
    cfg, x, p, _ = make(3, 2, N=9)
    return (x, p, cfg), {}


BAD = [
    Bad("positions-2d", change(0, lambda x: x[:, :2]), ValueError,
        r"positions must be \[\.\.\., D\] with D = 3 \(from the config\), got shape \(9, 2\)"),
    Bad("int-positions", change(0, lambda x: (x * 10).int()), TypeError, "positions must be float32 or float64"),
    Bad("int-params", change(1, lambda p: p.int()), TypeError, "params must be float16"),
    Bad("short-params", change(1, lambda p: p[:-1]), ValueError, r"params must be \[P\] with P = \d+"),
    Bad("2d-params", change(1, lambda p: p.reshape(-1, 2)), ValueError, r"params must be \[P\]"),
    Bad("meta-params", change(1, lambda p: p.to("meta")), ValueError, "params is on meta but positions is on cpu"),
    Bad("dict-config", change(2, lambda c: {"n_levels": 5}), TypeError, "config must be a HashGridConfig"),
    Bad("unknown-backend", lambda a, k: (a, {"backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {"backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
    Bad("triton-float64", lambda a, k: ([a[0].double(), a[1], a[2]], {"backend": "triton"}), pyengine.BackendError,
        "float64" if _dispatch.triton_interpret() else "CUDA tensors"),  # CPU tensors: Triton only interpreted
]

# float16 / bfloat16 floors: Triton's interpreter casts float32 -> bfloat16 by truncation
# (compiled Triton rounds to nearest even), one more bfloat16 ulp of the largest output.
SUITE = OpSuite(hash_encode_mod.OP, hash_encode, CASES, grads=(0, 1),
                tol={torch.float32: (2e-5, 1e-4), torch.float64: (1e-12, 1e-10), torch.float16: (1e-6, 0),
                     torch.bfloat16: (torch.finfo(torch.bfloat16).eps, 0)}, base=_base, bad=BAD)
globals().update(SUITE.tests())
