"""composite: semantics by hand, then every backend against the reference through the harness."""

import math

import pytest
import torch

import pyengine
from pyengine.ops import _dispatch
from pyengine.ops import composite as composite_mod
from pyengine.ops.composite import CompositeResult, composite, pack_info
from pyengine.reference import composite as ref_mod
from tests.helpers import assert_close
from tests.op_harness import Bad, Case, OpSuite, change

# backends that run on CPU tensors here; Triton only under its interpreter (no GPU)
CPU_BACKENDS = ["cpu"] + (["triton"] if _dispatch.triton_interpret() and not torch.cuda.is_available() else [])
ALL_CPU = ["reference"] + CPU_BACKENDS
NAMES = CompositeResult._fields
FP32_TOL = {"atol": 1e-5, "rtol": 1e-4}
# rays with no sample, one sample, a long one, and ordinary ones
COUNTS = [3, 0, 1, 300, 0, 2, 17, 5, 1, 0, 9]


def packed(counts, device="cpu"):
    counts = torch.as_tensor(counts, dtype=torch.int64)
    return torch.stack([torch.cumsum(counts, 0) - counts, counts], 1).to(device)


def make(counts=COUNTS, C=3, alpha_mode=False, dtype=torch.float32, seed=0, device="cpu"):
    """(packed_info, t_starts, t_ends, x, values | None) with samples ordered along each ray."""
    g = torch.Generator().manual_seed(seed)
    pi = packed(counts)
    S = int(pi[:, 1].sum()) if len(counts) else 0
    dt = torch.rand(S, generator=g, dtype=torch.float64) * 0.04 + 1e-3
    t0 = torch.rand(S, generator=g, dtype=torch.float64) * 0.1 + torch.arange(S, dtype=torch.float64) * 0.05
    if alpha_mode:
        x = torch.rand(S, generator=g, dtype=torch.float64) * 0.4
        x[::7] = 0.0
    else:
        x = torch.rand(S, generator=g, dtype=torch.float64) * 8.0
    v = torch.randn(S, C, generator=g, dtype=torch.float64) if C > 0 else None
    cast = lambda t: None if t is None else t.to(dtype).to(device)
    return pi.to(device), cast(t0), cast(t0 + dt), cast(x), cast(v)


def run(backend, pi, t0, t1, x, v, alpha_mode, upstream=None, seed=1):
    """(six outputs, grad_x, grad_values | None) with random upstream gradients on all outputs."""
    x = x.detach().clone().requires_grad_()
    v = v.detach().clone().requires_grad_() if v is not None else None
    kw = {"alphas": x} if alpha_mode else {"densities": x}
    out = composite(pi, t0, t1, values=v, backend=backend, **kw)
    if upstream is None:
        g = torch.Generator().manual_seed(seed)
        upstream = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in out]
    inputs = [x] + ([v] if v is not None else [])
    grads = torch.autograd.grad(out, inputs, [u.to(o) for u, o in zip(upstream, out)], allow_unused=True)
    return list(out), grads[0], (grads[1] if v is not None else None)


def compare(got, want, what, tol=FP32_TOL):
    out, gx, gv = got
    rout, rgx, rgv = want
    for name, a, b in zip(NAMES, out, rout):
        assert_close(a, b, atol=tol["atol"] * max(1.0, b.abs().max().item() if b.numel() else 0.0),
                     rtol=tol["rtol"], what=f"{what} {name}")
    for name, a, b in (("grad_x", gx, rgx), ("grad_values", gv, rgv)):
        if b is None:
            assert a is None, name
            continue
        assert_close(a, b, atol=tol["atol"] * max(1.0, b.abs().max().item() if b.numel() else 0.0),
                     rtol=tol["rtol"], what=f"{what} {name}")


# --------------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("backend", ALL_CPU)
def test_two_samples_by_hand_alpha_mode(backend):
    a0, a1 = 0.3, 0.6
    pi = torch.tensor([[0, 2]])
    t0, t1 = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = composite(pi, t0, t1, alphas=torch.tensor([a0, a1]), values=v, backend=backend)
    w = [a0, (1 - a0) * a1]
    close = lambda a, b: assert_close(a, torch.tensor(b), atol=1e-6, rtol=1e-6)
    close(out.weights, w)
    close(out.transmittance, [1.0, 1 - a0])
    close(out.alphas, [a0, a1])
    close(out.opacity, [w[0] + w[1]])
    close(out.depth, [w[0] * 1.5 + w[1] * 3.0])
    close(out.accumulated, [[w[0], 2 * w[1]]])


@pytest.mark.parametrize("backend", ALL_CPU)
def test_density_mode_by_hand_and_uncovered_samples(backend):
    """Samples 0 and 4 belong to no ray: weight 0, alpha 0, transmittance 1, no gradient."""
    sigma = torch.tensor([7.0, 1.0, 2.0, 3.0, 9.0], requires_grad=True)
    t0 = torch.tensor([0.0, 0.0, 0.5, 0.0, 0.0])
    t1 = torch.tensor([1.0, 0.5, 0.75, 2.0, 1.0])
    pi = torch.tensor([[1, 2], [3, 1], [4, 0]])
    out = composite(pi, t0, t1, densities=sigma, backend=backend)
    tau = [0.5, 0.5, 6.0]
    want_w = [0.0, 1 - math.exp(-0.5), math.exp(-0.5) * (1 - math.exp(-0.5)), 1 - math.exp(-6.0), 0.0]
    assert_close(out.weights, torch.tensor(want_w), atol=1e-6, rtol=1e-6, what="weights")
    assert_close(out.transmittance, torch.tensor([1.0, 1.0, math.exp(-tau[0]), 1.0, 1.0]), atol=1e-6, rtol=1e-6)
    assert_close(out.alphas, torch.tensor([0.0, 1 - math.exp(-0.5), 1 - math.exp(-0.5), 1 - math.exp(-6), 0.0]),
                 atol=1e-6, rtol=1e-6)
    assert_close(out.opacity, torch.tensor([want_w[1] + want_w[2], want_w[3], 0.0]), atol=1e-6, rtol=1e-6)
    assert_close(out.depth, torch.tensor([want_w[1] * 0.25 + want_w[2] * 0.625, want_w[3], 0.0]), atol=1e-6,
                 rtol=1e-6)
    assert out.accumulated.shape == (3, 0)
    (g,) = torch.autograd.grad(sum(o.sum() for o in out), sigma)
    assert g[0] == 0 and g[4] == 0 and (g[1:4] != 0).all()


def test_reference_matches_a_plain_loop():
    """The vectorised reference against the definition, one ray and one sample at a time."""
    pi, t0, t1, x, v = make([4, 0, 1, 6], C=2, dtype=torch.float64)
    for alpha_mode in (False, True):
        xs = x.clamp(max=1.0) if alpha_mode else x
        kw = {"alphas": xs} if alpha_mode else {"densities": xs}
        out = ref_mod.composite(pi, t0, t1, values=v, **kw)
        for r, (start, count) in enumerate(pi.tolist()):
            T, acc, op, depth = 1.0, torch.zeros(2, dtype=torch.float64), 0.0, 0.0
            for i in range(start, start + count):
                a = xs[i].item() if alpha_mode else 1 - math.exp(-xs[i].item() * (t1[i] - t0[i]).item())
                w = T * a
                assert abs(out.weights[i].item() - w) < 1e-12 and abs(out.transmittance[i].item() - T) < 1e-12
                acc, op, depth = acc + w * v[i], op + w, depth + w * (t0[i] + t1[i]).item() / 2
                T *= 1 - a
            assert_close(out.accumulated[r], acc, atol=1e-12, rtol=0)
            assert abs(out.opacity[r].item() - op) < 1e-12 and abs(out.depth[r].item() - depth) < 1e-12


# --------------------------------------------------------------------------------- special cases


@pytest.mark.parametrize("backend", ALL_CPU)
def test_opaque_sample_keeps_its_exact_gradient(backend):
    """alpha = 1 in the middle of a ray: everything behind it has T = 0, yet dL/dalpha of the
    samples in front of it and of the opaque one are finite and exact (no 1 / (1 - alpha))."""
    pi = torch.tensor([[0, 5]])
    t0 = torch.arange(5.0)
    t1 = t0 + 1
    a = torch.tensor([0.2, 0.5, 1.0, 0.3, 0.7], dtype=torch.float64)
    v = torch.randn(5, 3, dtype=torch.float64)
    want = run("reference", pi, t0.double(), t1.double(), a, v, True)
    got = run(backend, pi, t0, t1, a.float(), v.float(), True)
    compare(got, want, backend)
    assert got[0][1][3:].abs().max() == 0  # transmittance behind the opaque sample
    assert torch.isfinite(got[1]).all() and got[1][2] != 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_input_dtypes_are_promoted(backend):
    pi, t0, t1, x, v = make([2, 3], C=2)
    out = composite(pi.int(), t0.half(), t1.half(), densities=x, values=v.bfloat16(), backend=backend)
    want = ref_mod.composite(pi, t0.half().float(), t1.half().float(), densities=x, values=v.bfloat16().float())
    assert out.weights.dtype == torch.float32
    for name, a, b in zip(NAMES, out, want):
        assert_close(a, b, **FP32_TOL, what=name)


def test_non_contiguous_inputs():
    pi, t0, t1, x, v = make(COUNTS, C=3)
    pi_nc = torch.stack([pi[:, 0], pi[:, 1]], 0).t()
    v_nc = v.t().contiguous().t()
    x_nc = torch.stack([x, x], 1)[:, 0]
    assert not (pi_nc.is_contiguous() or v_nc.is_contiguous() or x_nc.is_contiguous())
    want = ref_mod.composite(pi, t0, t1, densities=x, values=v)
    for backend in CPU_BACKENDS:
        out = composite(pi_nc, t0, t1, densities=x_nc, values=v_nc, backend=backend)
        for name, a, b in zip(NAMES, out, want):
            assert_close(a, b, **FP32_TOL, what=f"{backend} {name}")


def test_default_backend_is_cpu_and_gradients_of_t_are_none(monkeypatch):
    monkeypatch.delenv("PYENGINE_BACKEND", raising=False)
    seen = []
    real = _dispatch.select

    def spy(*args, **kwargs):
        b = real(*args, **kwargs)
        seen.append(b.name)
        return b

    monkeypatch.setattr(_dispatch, "select", spy)
    pi, t0, t1, x, v = make([3, 2], C=1)
    t0.requires_grad_()
    x.requires_grad_()
    out = composite(pi, t0, t1, densities=x, values=v)
    assert seen[0] == "cpu"
    gt, gx = torch.autograd.grad(out.opacity.sum(), (t0, x), allow_unused=True)
    assert gt is None and gx is not None


# --------------------------------------------------------------------------------- pack_info


def test_pack_info():
    pi = pack_info(torch.tensor([0, 0, 2, 2, 2]), n_rays=4)
    assert pi.dtype == torch.int64
    assert pi.tolist() == [[0, 2], [2, 0], [2, 3], [5, 0]]
    assert pack_info(torch.zeros(0, dtype=torch.int32), 3).tolist() == [[0, 0]] * 3
    assert pack_info(torch.zeros(0, dtype=torch.int64), 0).shape == (0, 2)
    g = torch.Generator().manual_seed(3)
    ray = torch.sort(torch.randint(0, 50, (400,), generator=g)).values
    pi = pack_info(ray, 60)
    assert pi[:, 1].tolist() == torch.bincount(ray, minlength=60).tolist()
    for r in range(60):
        s, n = pi[r].tolist()
        assert (ray[s:s + n] == r).all()


def test_pack_info_errors():
    with pytest.raises(ValueError, match=r"sorted \(non-decreasing\); ray_indices\[1\] = 2 > ray_indices\[2\] = 1"):
        pack_info(torch.tensor([0, 2, 1]), 3)
    with pytest.raises(ValueError, match=r"in \[0, n_rays\) = \[0, 2\), got values in \[0, 2\]"):
        pack_info(torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="got values in"):
        pack_info(torch.tensor([-1, 0]), 2)
    with pytest.raises(TypeError, match="integer tensor"):
        pack_info(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match=r"must be \[S\]"):
        pack_info(torch.zeros(2, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="n_rays must be an int >= 0"):
        pack_info(torch.tensor([0]), -1)


# --------------------------------------------------------------------------------- checks & registration


def test_packed_info_values_are_checked():
    pi, t0, t1, x, v = make([2, 3], C=2)
    with pytest.raises(ValueError, match="counts must be >= 0; ray 1 has count -1"):
        composite(torch.tensor([[0, 2], [2, -1]]), t0, t1, densities=x)
    with pytest.raises(ValueError, match="starts must be >= 0; ray 0 starts at -1"):
        composite(torch.tensor([[-1, 2], [2, 3]]), t0, t1, densities=x)
    with pytest.raises(ValueError, match=r"ray 1 covers samples \[2, 6\), beyond the 5 samples"):
        composite(torch.tensor([[0, 2], [2, 4]]), t0, t1, densities=x)
    with pytest.raises(ValueError, match=r"must not overlap; ray 0 covers \[0, 3\) and ray 1 starts at 2"):
        composite(torch.tensor([[0, 3], [2, 3]]), t0, t1, densities=x)
    with pytest.raises(ValueError, match=r"must not overlap; ray 1 covers \[0, 3\) and ray 0 starts at 2"):
        composite(torch.tensor([[2, 3], [0, 3]]), t0, t1, densities=x)
    composite(torch.tensor([[0, 3], [2, 3]]), t0, t1, densities=x, validate=False, backend="reference")  # unchecked
    # rays out of order, an empty ray inside another's range, samples left uncovered: all valid
    out = composite(torch.tensor([[3, 2], [1, 0], [0, 2]]), t0, t1, densities=x)
    assert out.transmittance[2] == 1 and out.weights[2] == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kernels_clamp_bad_ranges(backend):
    """Called directly (no Python checks), a malformed packed_info must not touch memory out of
    bounds: each ray's range is clamped into [0, S]."""
    _, t0, t1, x, v = make([2, 3], C=2)
    bad = torch.tensor([[3, 100], [-5, 2], [7, 1], [0, -4]])
    out = torch.ops.pyengine.composite_fwd(bad, t0, t1, x, v, False, backend)
    want = torch.ops.pyengine.composite_fwd(torch.tensor([[3, 2], [0, 2], [5, 0], [0, 0]]), t0, t1, x, v,
                                            False, backend)
    for a, b in zip(out, want):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------- the harness


def _case(counts, C, alpha_mode, **kw):
    def make_(g, dtype, device):
        pi, t0, t1, x, v = make(counts, C, alpha_mode, dtype=dtype, seed=int(torch.randint(0, 2**31, (1,),
                                                                                        generator=g)), device=device)
        return (pi, t0, t1), {("alphas" if alpha_mode else "densities"): x, "values": v}

    return Case(f"{'alpha' if alpha_mode else 'density'}-C{C}-R{len(counts)}", make_, **kw)


def _many_rays():
    g = torch.Generator().manual_seed(7)
    counts = torch.randint(0, 40, (3000,), generator=g)
    counts[::97] = 0
    counts[5], counts[6], counts[7] = 1, 300, 1000
    return counts.tolist()


CASES = ([_case(COUNTS, C, am, triton=C in (0, 3, 33)) for am in (False, True) for C in (0, 1, 3, 7, 33)]
         + [_case(c, 2, am) for am in (False, True) for c in ([], [0, 0, 0], [1], [0, 1, 0])]  # empty and tiny
         + [_case(_many_rays(), 3, am, cpu=False) for am in (False, True)]
         + [_case([3, 0, 1, 4], 2, am) for am in (False, True)])


def _base(g, device):
    pi, t0, t1, x, v = make([2, 3], C=2, device=device)
    return (pi, t0, t1), {"densities": x, "values": v}


BAD = [
    Bad("both-modes", change("alphas", lambda _: torch.rand(5)), ValueError,
        "exactly one of densities and alphas, got both"),
    Bad("neither-mode", lambda a, k: (a, {"values": k["values"]}), ValueError, "got neither"),
    Bad("float-packed-info", change(0, lambda t: t.float()), TypeError, "packed_info must be int32 or int64"),
    Bad("flat-packed-info", change(0, lambda t: t.reshape(-1)), ValueError, r"packed_info must be \[R, 2\]"),
    Bad("int-t-starts", change(1, lambda t: t.long()), TypeError, "t_starts must be float16"),
    Bad("not-a-tensor", change("densities", lambda t: [1.0] * 5), TypeError, "densities must be a torch.Tensor"),
    Bad("short-t-ends", change(2, lambda t: t[:-1]), ValueError,
        r"t_ends must be \[S\] with S = 5 \(from t_starts\), got shape \(4,\)"),
    Bad("2d-densities", change("densities", lambda t: t[:, None]), ValueError, r"densities must be \[S\] with S = 5"),
    Bad("1d-values", change("values", lambda t: t[:, 0]), ValueError, r"values must be \[S, C\] with S = 5"),
    Bad("meta-values", change("values", lambda t: t.to("meta")), ValueError,
        "values is on meta but packed_info is on cpu"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
    Bad("triton-float64", lambda a, k: ([a[0], a[1].double(), a[2]], {**k, "backend": "triton"}),
        pyengine.BackendError, "computes in float32" if _dispatch.triton_interpret() else "CUDA tensors"),
]

SUITE = OpSuite(composite_mod.OP, composite, CASES, grads=("densities", "alphas", "values"),
                tol={torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-10)}, base=_base, bad=BAD,
                gradcheck_case="density-C2-R4", compile_kwargs={"validate": False})
globals().update(SUITE.tests())
