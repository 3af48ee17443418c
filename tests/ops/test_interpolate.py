"""interpolate: semantics against an independent loop, then every backend against the reference
through the harness (attr per image and shared, gradients to attr and to rast's u and v)."""

import pytest
import torch

import pyengine
from pyengine.ops import rasterize as rasterize_mod
from pyengine.ops.rasterize import interpolate, rasterize
from tests.helpers import assert_close
from tests.op_harness import Bad, Case, OpSuite, change
from tests.ops._raster_cases import make_mesh, seed_of

BACKENDS = ["reference", "cpu"]


def make(g, B=2, H=9, W=11, C=3, shared=False, dtype=torch.float64, device="cpu", **mesh):
    """(attr [B, V, C] or [V, C], rast [B, H, W, 4] from the reference rasterizer, tri)."""
    pos, tri = make_mesh(g, B=B, dtype=dtype, **mesh)
    rast = rasterize(pos, tri, (H, W), backend="reference")
    V = pos.shape[1]
    attr = torch.randn(*(() if shared else (B,)), V, C, generator=g, dtype=torch.float64).to(dtype)
    return attr.to(device), rast.to(device), tri.to(device)


def loop_interpolate(attr, rast, tri):
    """The definition, one pixel at a time."""
    B, H, W, _ = rast.shape
    a = attr if attr.dim() == 3 else attr[None].expand(B, *attr.shape)
    out = torch.zeros(B, H, W, a.shape[2], dtype=torch.float64)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                u, v, _, i = rast[b, y, x].tolist()
                if i == 0:
                    continue
                t0, t1, t2 = tri[int(i) - 1].tolist()
                out[b, y, x] = u * a[b, t0] + v * a[b, t1] + (1 - u - v) * a[b, t2]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [False, True])
def test_matches_the_definition(backend, shared):
    attr, rast, tri = make(torch.Generator().manual_seed(1), B=2, shared=shared)
    want = loop_interpolate(attr, rast, tri)
    got = interpolate(attr, rast, tri, backend=backend)
    assert got.shape == want.shape
    assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert (rast[..., 3] == 0).any() and (got[rast[..., 3] == 0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_vertex_attributes_are_reproduced_at_the_vertices_barycentrics(backend):
    """Interpolating the barycentric basis (attr = one-hot per vertex of each triangle, via a
    mesh with unshared vertices) returns (u, v, 1 - u - v)."""
    pos = torch.tensor([[-0.8, -0.8, 0.5, 1.0], [0.8, -0.7, 0.2, 1.5], [0.0, 0.8, -0.1, 0.7]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]])
    rast = rasterize(pos, tri, (7, 8), backend=backend)
    out = interpolate(torch.eye(3, dtype=torch.float64), rast, tri, backend=backend)[0]
    hit = rast[0, ..., 3] > 0
    u, v = rast[0, ..., 0], rast[0, ..., 1]
    assert_close(out[hit], torch.stack([u, v, 1 - u - v], -1)[hit], atol=1e-15, rtol=0)


@pytest.mark.parametrize("backend,device", [pytest.param("cpu", "cpu", id="cpu"),
                                            pytest.param("cuda", "cuda", id="cuda-gpu", marks=pytest.mark.gpu)])
def test_kernel_forward_equals_the_reference_bit_for_bit(backend, device):
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        for shared in (False, True):
            attr, rast, tri = make(g, B=3, H=21, W=19, C=5, shared=shared, dtype=dtype, crossing=True, device=device)
            assert torch.equal(interpolate(attr, rast, tri, backend=backend),
                               interpolate(attr, rast, tri, backend="reference"))


def test_mixed_dtypes_compute_in_float64():
    attr, rast, tri = make(torch.Generator().manual_seed(3))
    for backend in BACKENDS:
        out = interpolate(attr.float(), rast, tri, backend=backend)
        assert out.dtype == torch.float64
        assert_close(out, interpolate(attr.float().double(), rast, tri, backend=backend), atol=0, rtol=0)


def test_cpu_backward_is_deterministic_across_thread_counts():
    attr, rast, tri = make(torch.Generator().manual_seed(4), B=3, H=30, W=31, C=4, shared=True, dtype=torch.float32)
    up = torch.randn(3, 30, 31, 4, generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            a, r = attr.clone().requires_grad_(), rast.clone().requires_grad_()
            grads.append(torch.autograd.grad(interpolate(a, r, tri, backend="cpu"), (a, r), up))
    finally:
        torch.set_num_threads(before)
    for other in grads[1:]:
        assert all(torch.equal(x, y) for x, y in zip(grads[0], other))


def test_kernels_mask_bad_ids_and_indices():
    """Unchecked (validate=False), pixels whose id or triangle is out of range give zeros."""
    attr, rast, tri = make(torch.Generator().manual_seed(6))
    want = interpolate(attr, rast, tri, backend="cpu")
    bad = rast.clone()
    hit = bad[..., 3] > 0
    bad[0, 0, 0, 3], bad[0, 0, 1, 3], bad[1, 2, 2, 3] = 10**6, -4, float("nan")
    got = interpolate(attr, bad, tri, backend="cpu", validate=False)
    for y, x, b in ((0, 0, 0), (0, 1, 0), (2, 2, 1)):
        want[b, y, x] = 0
    assert torch.equal(got, want)
    tri_bad = tri.clone()
    tri_bad[0, 1] = 10**6
    got = interpolate(attr, rast, tri_bad, backend="cpu", validate=False)
    assert (got[rast[..., 3] == 1] == 0).all() and hit.any()


def test_empty_inputs():
    attr, rast, tri = make(torch.Generator().manual_seed(7))
    for backend in BACKENDS:
        assert interpolate(attr[:, :, :0], rast, tri, backend=backend).shape == (2, 9, 11, 0)
        assert (interpolate(attr, torch.zeros_like(rast), tri[:0], backend=backend) == 0).all()
        assert interpolate(attr[:0], rast[:0], tri, backend=backend).shape == (0, 9, 11, 3)
        assert interpolate(attr, rast[:, :0], tri, backend=backend).shape == (2, 0, 11, 3)


# --------------------------------------------------------------------------------- the harness


def _case(name, B=2, H=9, W=11, C=3, shared=False, **mesh):
    def make_(g, dtype, device):
        attr, rast, tri = make(torch.Generator().manual_seed(seed_of(g)), B=B, H=H, W=W, C=C, shared=shared,
                               dtype=dtype, device=device, **mesh)
        return (attr, rast, tri if C % 2 else tri.int()), {}

    return Case(name, make_)


CASES = [
    _case("B2-C3"),
    _case("B3-C5-shared", B=3, H=17, W=13, C=5, shared=True, crossing=True),
    _case("B1-C1-1x1", B=1, H=1, W=1, C=1),
    _case("B2-C0", C=0),
    _case("B0", B=0),
    _case("empty-mesh", grid=(1, 1), n_free=0),
    _case("gradcheck", B=2, H=6, W=7, C=2, grid=(3, 3), n_free=2),
]


def _base(g, device):
    attr, rast, tri = make(torch.Generator().manual_seed(0), B=2, H=5, W=6, dtype=torch.float32, device=device)
    return (attr, rast, tri), {}


BAD = [
    Bad("int-attr", change(0, lambda t: t.long()), TypeError, "attr must be float32 or float64"),
    Bad("int-rast", change(1, lambda t: t.long()), TypeError, "rast must be float32 or float64"),
    Bad("float-tri", change(2, lambda t: t.float()), TypeError, "tri must be int32 or int64"),
    Bad("attr-1d", change(0, lambda t: t[0, :, 0]), ValueError, r"attr must be \[B, V, C\]"),
    Bad("attr-batch", change(0, lambda t: torch.cat([t, t])), ValueError,
        r"rast must be \[B, H, W, 4\] with B = 4 \(from attr\), got shape \(2, 5, 6, 4\)"),
    Bad("flat-attr-3-columns-short", change(0, lambda t: t[0, :2]), ValueError,
        r"interpolate: tri must hold vertex indices in \[0, V\) = \[0, 2\)"),
    Bad("rast-3-channels", change(1, lambda t: t[..., :3]), ValueError, r"rast must be \[B, H, W, 4\]"),
    Bad("tri-out-of-range", change(2, lambda t: torch.where(t == 2, 500, t)), ValueError,
        r"interpolate: tri must hold vertex indices in \[0, V\) = \[0, \d+\); tri\[\d+, \d\] = 500"),
    Bad("rast-id-beyond-T", change(1, lambda t: torch.cat([t[..., :3], t[..., 3:] + 1000], -1)), ValueError,
        r"rast\[\.\.\., 3\] must hold triangle ids \+ 1 in \[0, T\] = \[0, \d+\]; rast\[0, 0, 0, 3\] = 10"),
    Bad("rast-id-nan", change(1, lambda t: torch.cat([t[..., :3], t[..., 3:] * float("nan")], -1)), ValueError,
        r"rast\[0, 0, 0, 3\] = nan"),
    Bad("meta-rast", change(1, lambda t: t.to("meta")), ValueError, "rast is on meta but attr is on cpu"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(rasterize_mod.INTERP_OP, interpolate, CASES, grads=(0, 1),
                tol={torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-10)}, base=_base, bad=BAD,
                gradcheck_case="gradcheck", compile_kwargs={"validate": False})
globals().update(SUITE.tests())
