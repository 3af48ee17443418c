"""rasterize: semantics by hand against independent computations, exactness of the kernels, then
every backend against the reference through the harness."""

import pytest
import torch

import pyengine
from pyengine.ops import rasterize as rasterize_mod
from pyengine.ops.rasterize import interpolate, rasterize
from pyengine.reference import rasterize as ref_mod
from tests.helpers import assert_close
from tests.op_harness import Bad, Case, OpSuite, change
from tests.ops._raster_cases import make_mesh, seed_of

BACKENDS = ["reference", "cpu"]


def solve_pixel(p, X, Y):
    """Independent perspective-correct barycentrics: the lambda with sum lambda_k (x_k - X w_k) = 0,
    sum lambda_k (y_k - Y w_k) = 0, sum lambda_k = 1, by a linear solve in float64. p: [3, 4]."""
    p = p.double()
    A = torch.stack([p[:, 0] - X * p[:, 3], p[:, 1] - Y * p[:, 3], torch.ones(3, dtype=torch.float64)])
    lam = torch.linalg.solve(A, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    w = (lam * p[:, 3]).sum()
    return lam, w, (lam * p[:, 2]).sum() / w


def expected_one_triangle(p, H, W, margin=1e-9):
    """[H, W] covered mask, u, v, z/w of triangle p [3, 4] from solve_pixel; asserts that no pixel
    centre lies within `margin` of an edge or of a clip boundary (the case must be unambiguous)."""
    cov = torch.zeros(H, W, dtype=torch.bool)
    uvz = torch.zeros(H, W, 3, dtype=torch.float64)
    for py in range(H):
        for px in range(W):
            X, Y = (2 * px + 1) / W - 1, (2 * py + 1) / H - 1
            lam, w, zw = solve_pixel(p, X, Y)
            assert lam.abs().min() > margin and abs(float(w)) > margin and abs(abs(float(zw)) - 1) > margin
            cov[py, px] = bool((lam > 0).all() and w > 0 and -1 <= zw <= 1)
            uvz[py, px] = torch.stack([lam[0], lam[1], zw])
    return cov, uvz


def check_against(rast, cov, uvz, tid, tol):
    assert torch.equal(rast[..., 3] != 0, cov), f"coverage:\n{(rast[..., 3] != 0).int()}\nwant\n{cov.int()}"
    assert (rast[..., 3][cov] == tid + 1).all()
    assert_close(rast[..., :3][cov].double(), uvz[cov], atol=tol, rtol=tol, what="u, v, z/w")
    assert (rast[~cov] == 0).all()


# --------------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_triangle_with_perspective(backend, dtype):
    ndc = torch.tensor([[-0.73, -0.61, 0.2], [0.81, -0.37, -0.4], [-0.12, 0.77, 0.6]], dtype=torch.float64)
    w = torch.tensor([0.7, 1.9, 1.3], dtype=torch.float64)
    p = torch.cat([ndc * w[:, None], w[:, None]], 1)
    H, W = 11, 13
    cov, uvz = expected_one_triangle(p, H, W)
    assert 20 < int(cov.sum()) < H * W - 20
    rast = rasterize(p.to(dtype), torch.tensor([[0, 1, 2]]), (H, W), backend=backend)
    assert rast.shape == (1, H, W, 4) and rast.dtype == dtype
    check_against(rast[0], cov, uvz, 0, 1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_affine_triangle_by_hand_and_row_zero_is_y_minus_one(backend):
    """w = 1: the barycentrics are the 2D ones. A triangle in the lower-left corner of the screen
    (y near -1) covers pixels of row 0, not of the last row."""
    pos = torch.tensor([[-1.0, -1.0, 0.25, 1.0], [0.1, -1.0, 0.25, 1.0], [-1.0, 0.1, 0.25, 1.0]])
    rast = rasterize(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (4, 4), backend=backend)[0]
    # centres at -0.75, -0.25, 0.25, 0.75: covered when X + Y <= -0.9
    want = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(rast[..., 3] == 1, want)
    # pixel (0, 0): X = Y = -0.75 = -1 + 1.1 v (x) = -1 + 1.1 (1 - u - v) (y)
    v = 0.25 / 1.1
    assert_close(rast[0, 0, :3], torch.tensor([1 - 2 * v, v, 0.25]), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearer_triangle_wins_and_order_in_tri_does_not_matter(backend):
    far = torch.tensor([[-0.9, -0.9, 0.5, 1.0], [0.9, -0.8, 0.5, 1.0], [0.0, 0.9, 0.5, 1.0]])
    near = torch.tensor([[-0.5, -0.95, -0.3, 2.0], [1.6, 0.4, -0.2, 2.0], [-0.8, 1.5, -0.4, 2.0]])
    pos = torch.cat([far, near])
    H, W = 9, 10
    ab = rasterize(pos, torch.tensor([[0, 1, 2], [3, 4, 5]]), (H, W), backend=backend)[0]
    ba = rasterize(pos, torch.tensor([[3, 4, 5], [0, 1, 2]]), (H, W), backend=backend)[0]
    cov_far, uvz_far = expected_one_triangle(far.double(), H, W)
    cov_near, uvz_near = expected_one_triangle(near.double(), H, W)
    assert (cov_far & cov_near).sum() > 10 and (cov_far & ~cov_near).sum() > 3
    # the near triangle wins wherever it covers, in either order
    want_id = torch.where(cov_near, 2, torch.where(cov_far, 1, 0))
    assert torch.equal(ab[..., 3].long(), want_id)
    assert torch.equal(ba[..., 3].long(), torch.where(want_id > 0, 3 - want_id, 0))
    assert torch.equal(ab[..., :3], ba[..., :3])
    uvz = torch.where(cov_near[..., None], uvz_near, uvz_far)
    hit = want_id > 0
    assert_close(ab[..., :3][hit].double(), uvz[hit], atol=1e-5, rtol=1e-5)
    assert (ab[~hit] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_triangle_behind_the_camera_covers_nothing(backend):
    front = torch.tensor([[-0.7, -0.6, 0.1, 1.0], [0.8, -0.5, 0.1, 1.0], [0.0, 0.8, 0.1, 1.0]])
    tri = torch.tensor([[0, 1, 2]])
    assert (rasterize(front, tri, (8, 8), backend=backend)[..., 3] > 0).sum() > 10
    # the same projection (x / w, y / w, z / w) with every w < 0
    assert (rasterize(-front, tri, (8, 8), backend=backend) == 0).all()
    # w = 0 everywhere: nothing either
    flat = front.clone()
    flat[:, 3] = 0
    assert (rasterize(flat, tri, (8, 8), backend=backend) == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_triangle_crossing_w_zero(backend):
    """One vertex behind the camera: the covered region is where the barycentrics are >= 0 and
    the interpolated w > 0, unbounded by the projected vertices (the kernels test every pixel)."""
    p = torch.tensor([[-0.6, -0.55, 0.1, 1.0], [0.5, -0.45, 0.2, 1.2], [0.13, 0.31, -0.3, -0.4]],
                     dtype=torch.float64)
    H, W = 12, 15
    cov, uvz = expected_one_triangle(p, H, W)
    assert 10 < int(cov.sum()) < H * W
    for dtype in (torch.float32, torch.float64):
        rast = rasterize(p.to(dtype), torch.tensor([[0, 1, 2]]), (H, W), backend=backend)[0]
        check_against(rast, cov, uvz, 0, 1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_depth_clipping(backend):
    """Pixels where z/w leaves [-1, 1] are not covered (a triangle through the far plane)."""
    p = torch.tensor([[-0.9, -0.9, 0.3, 1.0], [0.9, -0.9, 0.3, 1.0], [0.0, 0.9, 2.9, 1.0]], dtype=torch.float64)
    cov, uvz = expected_one_triangle(p, 9, 9)
    rast = rasterize(p, torch.tensor([[0, 1, 2]]), (9, 9), backend=backend)[0]
    check_against(rast, cov, uvz, 0, 1e-12)
    assert (uvz[..., 2] > 1).any() and cov.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_depths_go_to_the_smaller_id_and_depth_is_compared_in_float32(backend):
    base = torch.tensor([[-0.9, -0.9, 0.5, 1.0], [0.9, -0.9, 0.5, 1.0], [0.0, 0.9, 0.5, 1.0]], dtype=torch.float64)
    # triangles 1 and 2 are the same; triangle 0 is nearer than them by 1e-12, below float32's resolution
    nearer = base.clone()
    nearer[:, 2] -= 1e-12
    pos = torch.cat([base, nearer, base])
    tri = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    rast = rasterize(pos, tri, (6, 6), backend=backend)[0]
    assert (rast[..., 3][rast[..., 3] > 0] == 1).all()  # all ties: the smallest id
    rast = rasterize(pos, tri[[1, 0, 2]], (6, 6), backend=backend)[0]
    assert (rast[..., 3][rast[..., 3] > 0] == 1).all()  # now triangle 3's copy, listed first
    assert rast[..., 3].max() == 1 and (rast[..., 2][rast[..., 3] > 0] < 0.5).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_edge_pixel_goes_to_one_of_the_two_triangles(backend):
    """Pixel centres on the diagonal of a quad are covered by both halves (no top-left rule); at
    equal depth the first triangle takes them; no pixel of the quad is left empty."""
    pos = torch.tensor([[-1.0, -1, 0, 1], [1, -1, 0, 1], [1, 1, 0, 1], [-1, 1, 0, 1]])
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast = rasterize(pos, tri, (4, 4), backend=backend)[0]
    ids = rast[..., 3].long()
    assert (ids > 0).all()
    diag = torch.eye(4, dtype=torch.bool)
    assert (ids[diag] == 1).all()
    assert (ids[torch.tril(torch.ones(4, 4, dtype=torch.bool), -1)] == 2).all()  # row > column: y > x
    assert (ids[torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)] == 1).all()


KERNELS = [pytest.param("cpu", "cpu", id="cpu"), pytest.param("cuda", "cuda", id="cuda-gpu", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("backend,device", KERNELS)
def test_kernel_forward_equals_the_reference_bit_for_bit(backend, device):
    """Ids and values, on the reference's device; a cuda run also equals the CPU reference."""
    g = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.float64):
        for B, (H, W) in ((1, (17, 23)), (3, (31, 9)), (2, (64, 48)), (2, (128, 97))):
            pos, tri = make_mesh(g, B=B, grid=(6, 7), n_free=8, behind=True, crossing=True, dtype=dtype)
            want = rasterize(pos, tri, (H, W), backend="reference")
            pos, tri = pos.to(device), tri.to(device)
            assert torch.equal(rasterize(pos, tri, (H, W), backend="reference").cpu(), want)
            got = rasterize(pos, tri, (H, W), backend=backend).cpu()
            diff = (got != want).any(-1)
            assert not diff.any(), f"{dtype} B={B} {H}x{W}: {int(diff.sum())} pixels differ, e.g. " \
                                   f"{got[diff][:3].tolist()} vs {want[diff][:3].tolist()}"
            assert (want[..., 3] > 0).float().mean() > 0.4  # the case covers most of the image


def test_empty_inputs():
    pos, tri = make_mesh(torch.Generator().manual_seed(0), B=2)
    for backend in BACKENDS:
        assert rasterize(pos, tri, (0, 5), backend=backend).shape == (2, 0, 5, 4)
        assert rasterize(pos, tri[:0], (3, 5), backend=backend).abs().sum() == 0
        assert rasterize(pos[:0], tri, (3, 5), backend=backend).shape == (0, 3, 5, 4)
        assert rasterize(pos[:, :0], tri[:0], (3, 5), backend=backend).shape == (2, 3, 5, 4)
        p = pos[0].clone().requires_grad_()
        rast = rasterize(p, tri[:0], (3, 4), backend=backend)
        assert rast.shape == (1, 3, 4, 4)
        (g,) = torch.autograd.grad(rast.sum(), p)
        assert (g == 0).all()


@pytest.mark.parametrize("backend,device", KERNELS)
def test_kernels_mask_bad_indices_and_non_finite_positions(backend, device):
    """Unchecked (validate=False), a triangle with an index out of range covers nothing and NaN
    or infinite positions cover nothing: no out-of-bounds access, the other triangles unchanged."""
    pos, tri = make_mesh(torch.Generator().manual_seed(3), B=2, device=device)
    want = rasterize(pos, tri, (9, 11), backend=backend)
    bad = torch.cat([tri, torch.tensor([[0, 1, 10**6], [-5, 1, 2]], device=device)])
    assert torch.equal(rasterize(pos, bad, (9, 11), backend=backend, validate=False), want)
    V = pos.shape[1]
    extra = torch.tensor([[[float("nan"), 0, 0, 1], [0.5, 0, 0, 1], [0, 0.5, 0, 1]],
                          [[float("inf"), 0, 0, 1], [-0.5, 0, 0, 1], [0, -0.5, 0, 1]]], dtype=pos.dtype, device=device)
    pos2 = torch.cat([pos, extra.reshape(1, 6, 4).expand(2, 6, 4)], 1)
    tri2 = torch.cat([tri, torch.tensor([[V, V + 1, V + 2], [V + 3, V + 4, V + 5]], device=device)])
    assert torch.equal(rasterize(pos2, tri2, (9, 11), backend=backend), want)


def test_cpu_backward_is_deterministic_across_thread_counts():
    pos, tri = make_mesh(torch.Generator().manual_seed(5), B=2, grid=(7, 8), n_free=9, crossing=True,
                         dtype=torch.float32)
    up = torch.randn(2, 40, 37, 4, generator=torch.Generator().manual_seed(6))
    before = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            p = pos.clone().requires_grad_()
            (g,) = torch.autograd.grad(rasterize(p, tri, (40, 37), backend="cpu"), p, up)
            grads.append(g)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


@pytest.mark.gpu
def test_cuda_backward_matches_the_cpu_kernel():
    """grad_pos of rasterize + interpolate on the cuda kernels (atomics) against the cpu kernels."""
    pos, tri = make_mesh(torch.Generator().manual_seed(8), B=3, grid=(9, 11), n_free=12, crossing=True)
    colors = torch.randn(pos.shape[1], 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    up = torch.randn(3, 70, 83, 4, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    grads = []
    for backend, device in (("cpu", "cpu"), ("cuda", "cuda")):
        p, c = pos.to(device).requires_grad_(), colors.to(device).requires_grad_()
        t = tri.to(device)
        rast = rasterize(p, t, (70, 83), backend=backend)
        out = interpolate(c, rast, t, backend=backend)
        grads.append([x.cpu() for x in torch.autograd.grad((out * up.to(device)).sum() + rast.sum(), (p, c))])
    for a, b, name in zip(grads[1], grads[0], ("pos", "colors")):
        assert_close(a, b, atol=1e-10, rtol=1e-10, what=f"grad of {name}")


def test_default_backend_is_cpu(monkeypatch):
    monkeypatch.delenv("PYENGINE_BACKEND", raising=False)
    seen = []
    real = pyengine.ops._dispatch.select

    def spy(*args, **kwargs):
        b = real(*args, **kwargs)
        seen.append(b.name)
        return b

    monkeypatch.setattr(pyengine.ops._dispatch, "select", spy)
    pos, tri = make_mesh(torch.Generator().manual_seed(0), B=1)
    rasterize(pos, tri, (4, 4))
    assert seen == ["cpu"]


def test_reference_docstring_examples():
    pos = torch.tensor([[-0.8, -0.8, 0.5, 1.0], [0.8, -0.8, 0.5, 1.0], [0.0, 0.8, 0.5, 1.0]])
    tri = torch.tensor([[0, 1, 2]])
    rast = rasterize(pos, tri, (4, 5))
    lam, _, zw = solve_pixel(pos, 0.0, -0.25)
    assert_close(rast[0, 1, 2], torch.tensor([lam[0], lam[1], zw, 1.0]).float(), atol=1e-6, rtol=0)
    colors = torch.eye(3)
    assert_close(interpolate(colors, rast, tri)[0, 1, 2], lam.float(), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------- end to end


def interior(ids: torch.Tensor) -> torch.Tensor:
    """[B, H, W] pixels covered by the same triangle as their four neighbours (away from edges)."""
    m = ids > 0
    pad = torch.nn.functional.pad(ids, (1, 1, 1, 1), value=-1)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        m &= pad[:, dy:dy + ids.shape[1], dx:dx + ids.shape[2]] == ids
    return m


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_gradient_to_pos_matches_finite_differences(backend):
    """loss = sum over interior pixels of weights * interpolate(colours): d loss / d pos from
    autograd (rasterize's and interpolate's backward) against central differences."""
    g = torch.Generator().manual_seed(21)
    pos, tri = make_mesh(g, B=2, grid=(3, 4), n_free=4, crossing=True)
    H, W = 13, 16
    colors = torch.randn(2, pos.shape[1], 3, generator=g, dtype=torch.float64)
    weights = torch.randn(2, H, W, 3, generator=g, dtype=torch.float64)
    mask = interior(rasterize(pos, tri, (H, W), backend="reference")[..., 3].long())
    assert mask.sum() > 40

    def loss(p):
        rast = rasterize(p, tri, (H, W), backend=backend)
        return (interpolate(colors, rast, tri, backend=backend) * weights * mask[..., None]).sum()

    p = pos.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(p), p)
    eps = 1e-6
    num = torch.zeros_like(pos)
    for idx in torch.nonzero(grad.abs() > 0).tolist() + [[0, 0, 0], [1, 2, 3]]:
        d = torch.zeros_like(pos)
        d[tuple(idx)] = eps
        num[tuple(idx)] = (loss(pos + d) - loss(pos - d)) / (2 * eps)
    assert (grad.abs() > 0).sum() > 20
    assert_close(grad, num, atol=1e-6, rtol=1e-5, what=f"{backend} d loss / d pos")


# --------------------------------------------------------------------------------- the harness


def _case(name, B, H, W, **mesh):
    def make_(g, dtype, device):
        pos, tri = make_mesh(torch.Generator().manual_seed(seed_of(g)), B=B, dtype=dtype, device=device, **mesh)
        return (pos, tri, (H, W)), {}

    return Case(name, make_)


def _flat_case(g, dtype, device):
    pos, tri = make_mesh(torch.Generator().manual_seed(seed_of(g)), B=1, dtype=dtype, device=device)
    return (pos[0], tri.int(), (9, 7)), {}


CASES = [
    _case("B2-15x17", 2, 15, 17),
    _case("B1-33x21-behind-crossing", 1, 33, 21, behind=True, crossing=True, n_free=7),
    _case("B3-8x5", 3, 8, 5, grid=(3, 3), n_free=3),
    _case("B2-1x1", 2, 1, 1),
    _case("B2-0x9", 2, 0, 9),
    _case("B0-7x7", 0, 7, 7),
    _case("empty-mesh", 2, 5, 6, grid=(1, 1), n_free=0),
    Case("flat-pos-int32-tri", _flat_case),
    _case("gradcheck", 2, 7, 9, grid=(3, 3), n_free=3, crossing=True),
]


def _base(g, device):
    pos, tri = make_mesh(torch.Generator().manual_seed(0), B=2, grid=(3, 3), n_free=2, device=device)
    return (pos.float(), tri, (5, 6)), {}


BAD = [
    Bad("int-pos", change(0, lambda t: t.long()), TypeError, "pos must be float32 or float64"),
    Bad("half-pos", change(0, lambda t: t.half()), TypeError, "pos must be float32 or float64"),
    Bad("pos-3-coords", change(0, lambda t: t[..., :3]), ValueError, r"pos must be \[B, V, 4\]"),
    Bad("pos-4d", change(0, lambda t: t[None]), ValueError, r"pos must be \[B, V, 4\]"),
    Bad("flat-pos-3-coords", change(0, lambda t: t[0, :, :3]), ValueError, r"pos must be \[V, 4\]"),
    Bad("float-tri", change(1, lambda t: t.float()), TypeError, "tri must be int32 or int64"),
    Bad("tri-4-columns", change(1, lambda t: torch.cat([t, t[:, :1]], 1)), ValueError, r"tri must be \[T, 3\]"),
    Bad("tri-out-of-range", change(1, lambda t: torch.where(t == 3, 99, t)), ValueError,
        r"tri must hold vertex indices in \[0, V\) = \[0, \d+\); tri\[\d+, \d\] = 99"),
    Bad("tri-negative", change(1, lambda t: t - 1), ValueError, r"tri\[\d+, \d\] = -1"),
    Bad("negative-resolution", change(2, lambda r: (-1, 6)), ValueError, r"resolution must lie in \[0, 32768\]"),
    Bad("huge-resolution", change(2, lambda r: (5, 40000)), ValueError, r"resolution must lie in \[0, 32768\]"),
    Bad("float-resolution", change(2, lambda r: (5.0, 6)), ValueError, r"resolution must be \(height, width\)"),
    Bad("one-number-resolution", change(2, lambda r: 5), ValueError, r"resolution must be \(height, width\)"),
    Bad("bool-resolution", change(2, lambda r: (True, 6)), ValueError, r"resolution must be \(height, width\)"),
    Bad("pos-not-a-tensor", change(0, lambda t: t.tolist()), TypeError, "pos must be a torch.Tensor"),
    Bad("meta-tri", change(1, lambda t: t.to("meta")), ValueError, "tri is on meta but pos is on cpu"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(rasterize_mod.RAST_OP, rasterize, CASES, grads=(0,),
                tol={torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-10)}, base=_base, bad=BAD,
                gradcheck_case="gradcheck", compile_kwargs={"validate": False})
globals().update(SUITE.tests())


def test_reference_module_is_the_specification():
    """The public op's reference backend is pyengine.reference.rasterize."""
    pos, tri = make_mesh(torch.Generator().manual_seed(1), B=2)
    assert torch.equal(rasterize(pos, tri, (6, 7), backend="reference"), ref_mod.rasterize(pos, tri, (6, 7)))
