"""Measurement operators: adjoints, pseudo-inverses and spectral views against dense matrices built by applying
each operator to the basis images, conventions against independent computations, and input checks."""

import math

import numpy as np
import pytest
import torch

from pyengine.inverse.base import Problem, require_linear, require_spectral
from pyengine.inverse.operators import (
    TASKS,
    CircularBlur,
    bicubic_matrix,
    make_operator,
    motion_kernel,
)
from tests.helpers import assert_close

# (task, in_shape, options): odd and even sides, one and three channels
CASES = [
    ("sr2", (3, 8, 8), {}), ("sr2", (1, 6, 10), {}),
    ("sr4", (1, 12, 12), {}), ("sr4", (3, 16, 16), {}), ("sr4", (1, 8, 12), {}),
    ("sr4_bicubic", (3, 8, 8), {}), ("sr4_bicubic", (1, 12, 12), {}), ("sr4_bicubic", (1, 16, 12), {}),
    ("inpaint_box", (3, 8, 8), {}), ("inpaint_box", (1, 9, 7), {"box": (3, 4)}), ("inpaint_box", (3, 16, 16), {}),
    ("inpaint_random", (3, 8, 8), {}), ("inpaint_random", (1, 9, 7), {"missing": 0.5}),
    ("deblur_gauss", (3, 8, 8), {"sigma": 1.0, "kernel_size": 5}), ("deblur_gauss", (1, 9, 7), {}),
    ("deblur_gauss", (1, 12, 12), {"sigma": 1.5, "kernel_size": 7}), ("deblur_gauss", (3, 16, 16), {}),
    ("deblur_motion", (3, 8, 8), {"kernel_size": 5}), ("deblur_motion", (1, 9, 7), {"kernel_size": 5}),
    ("deblur_motion", (1, 12, 12), {"kernel_size": 7, "intensity": 1.0}),
    ("colorize", (3, 8, 8), {}), ("colorize", (3, 9, 7), {}), ("colorize", (3, 16, 16), {}),
]
IDS = [f"{t}-{'x'.join(map(str, s))}{'-opt' if o else ''}" for t, s, o in CASES]


def _box_blur(shape):
    """A blur whose spectrum has exact zeros (the 1 x 2 box at the Nyquist column of an even width)."""
    return CircularBlur(torch.tensor([[0.5, 0.5]]), shape, name="box")


def _make(case):
    task, shape, options = case
    return make_operator(task, shape, **options)


def _dense(f, shape):
    """``[m, n]`` matrix of the linear map ``f`` on ``[B, *shape]`` tensors (its columns: f of the basis)."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return f(basis).reshape(n, -1).T


BOX_SHAPES = [(1, 6, 8), (2, 5, 4)]


@pytest.fixture(params=CASES + BOX_SHAPES, ids=IDS + [f"box-{'x'.join(map(str, s))}" for s in BOX_SHAPES])
def op(request):
    return _make(request.param) if len(request.param) == 3 and isinstance(request.param[0], str) else \
        _box_blur(request.param)


def test_tasks_cover_the_contract():
    assert set(TASKS) == {"sr2", "sr4", "sr4_bicubic", "inpaint_box", "inpaint_random", "deblur_gauss",
                          "deblur_motion", "colorize", "phase"}
    for task in TASKS:
        shape = (3, 16, 16)
        assert make_operator(task, shape).name == task


def test_adjoint_identity(op):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *op.in_shape, generator=g, dtype=torch.float64)
    y = torch.randn(2, *op.out_shape, generator=g, dtype=torch.float64)
    lhs = (op.forward(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + 1), (lhs.item(), rhs.item())


def test_spectral_view_is_the_svd(op):
    """U diag(s) V^T == A, V orthonormal, U orthonormal on s > 0, Vt/Ut are the transposes of V/U."""
    view = op.spectral
    assert view is not None
    n = math.prod(op.in_shape)
    A = _dense(op.forward, op.in_shape)
    s = view.singulars(dtype=torch.float64)
    assert s.shape == (n,) and bool((s >= 0).all())
    V = _dense(view.V, (n,))                                   # [n px, n coef]
    U = _dense(view.U, (n,))                                   # [m, n coef]
    eye = torch.eye(n, dtype=torch.float64)
    assert_close(V.T @ V, eye, 1e-12, 0, "V^T V")
    assert_close(_dense(view.Vt, op.in_shape), V.T, 1e-12, 0, "Vt")
    assert_close((U * s) @ V.T, A, 1e-12, 0, "U diag(s) V^T")
    pos = s > 0
    assert_close(U[:, pos].T @ U[:, pos], torch.eye(int(pos.sum()), dtype=torch.float64), 1e-12, 0, "U^T U")
    assert_close(U[:, ~pos], torch.zeros_like(U[:, ~pos]), 0, 0, "U ignores s = 0")
    assert_close(_dense(view.Ut, op.out_shape), U.T, 1e-12, 0, "Ut")
    # the rank is that of the dense matrix
    assert int(pos.sum()) == int(torch.linalg.matrix_rank(A))


def test_pinv_is_the_moore_penrose_inverse(op):
    A = _dense(op.forward, op.in_shape)
    rcond = getattr(op, "rcond", 0.0)
    P = torch.linalg.pinv(A, rtol=rcond) if rcond else torch.linalg.pinv(A)
    g = torch.Generator().manual_seed(2)
    y = torch.randn(3, *op.out_shape, generator=g, dtype=torch.float64)
    expect = (y.reshape(3, -1) @ P.T).reshape(3, *op.in_shape)
    assert_close(op.pinv(y), expect, 1e-9 * P.abs().max().item(), 0, "pinv")
    # and through the spectral view, where pinv truncates nothing
    view = op.spectral
    s = view.singulars(dtype=torch.float64)
    if not rcond or bool((s[s > 0] > rcond * s.max()).all()):
        c = view.Ut(y)
        c = torch.where(s > 0, c / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(c))
        assert_close(view.V(c), expect, 1e-9 * P.abs().max().item(), 0, "V(U^T y / s)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_dtypes_and_batches(op, dtype, batch):
    """float32 follows float64; the empty batch gives empty outputs of the right shapes."""
    g = torch.Generator().manual_seed(3)
    n = math.prod(op.in_shape)
    x64 = torch.rand(batch, *op.in_shape, generator=g, dtype=torch.float64)
    y64 = torch.rand(batch, *op.out_shape, generator=g, dtype=torch.float64)
    c64 = torch.randn(batch, n, generator=g, dtype=torch.float64)
    x, y, c = x64.to(dtype), y64.to(dtype), c64.to(dtype)
    view = op.spectral
    for what, f, a, a64, shape in [("forward", op.forward, x, x64, op.out_shape),
                                   ("adjoint", op.adjoint, y, y64, op.in_shape),
                                   ("pinv", op.pinv, y, y64, op.in_shape),
                                   ("Vt", view.Vt, x, x64, (n,)), ("V", view.V, c, c64, op.in_shape),
                                   ("Ut", view.Ut, y, y64, (n,)), ("U", view.U, c, c64, op.out_shape)]:
        out = f(a)
        assert out.dtype == dtype and tuple(out.shape) == (batch, *shape), what
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        ref = f(a64)
        assert_close(out, ref.to(dtype), tol * (1 + ref.abs().max().item() if batch else 1), 0, what)
    assert view.singulars(dtype=dtype).dtype == dtype


def test_avgpool_and_colorize_conventions():
    x = torch.rand(2, 3, 8, 12, dtype=torch.float64)
    y = make_operator("sr4", (3, 8, 12))(x)
    expect = x.reshape(2, 3, 2, 4, 3, 4).mean((3, 5))
    assert_close(y, expect, 1e-15, 0, "sr4 = block means")
    assert_close(make_operator("colorize", (3, 8, 12))(x), x.mean(1, keepdim=True), 1e-15, 0, "colorize = mean")


def test_bicubic_matches_pil():
    """sr4_bicubic is PIL's Image.resize(BICUBIC) on float images (Keys a = -0.5, antialiased, renormalised edges)."""
    Image = pytest.importorskip("PIL.Image")
    x = np.random.default_rng(0).random((16, 12)).astype(np.float32)
    pil = np.asarray(Image.fromarray(x, mode="F").resize((3, 4), Image.BICUBIC), dtype=np.float64)
    ours = make_operator("sr4_bicubic", (1, 16, 12))(torch.from_numpy(x).double()[None, None])[0, 0]
    assert_close(ours, torch.from_numpy(pil), 1e-5, 0, "bicubic vs PIL")
    D = bicubic_matrix(16, 4)
    assert D.shape == (4, 16) and bool((D.sum(1) - 1).abs().max() < 1e-14)


def test_inpainting_masks():
    op = make_operator("inpaint_box", (3, 10, 8))
    expect = torch.ones(10, 8, dtype=torch.float64)
    expect[(10 - 5) // 2:(10 - 5) // 2 + 5, 2:6] = 0
    assert_close(op.mask[0], expect, 0, 0, "centred box of half the sides")
    op = make_operator("inpaint_random", (3, 10, 10), missing=0.7)
    assert op.mask.shape == (1, 10, 10) and int((op.mask == 0).sum()) == 70
    y = op(torch.rand(1, 3, 10, 10, dtype=torch.float64) + 1)
    assert bool(((y == 0).all(1) | (y != 0).all(1)).all()), "the same pixels are missing in every channel"
    same = make_operator("inpaint_random", (3, 10, 10), generator=torch.Generator().manual_seed(5))
    again = make_operator("inpaint_random", (3, 10, 10), generator=torch.Generator().manual_seed(5))
    other = make_operator("inpaint_random", (3, 10, 10), generator=torch.Generator().manual_seed(6))
    assert torch.equal(same.mask, again.mask) and not torch.equal(same.mask, other.mask)
    assert torch.equal(op.mask, make_operator("inpaint_random", (3, 10, 10)).mask), "default seed is fixed"


@pytest.mark.parametrize("task", ["deblur_gauss", "deblur_motion"])
def test_blur_is_circular_convolution(task):
    """y = k * x with periodic boundary, the kernel's middle pixel at the origin (direct sum, not FFT)."""
    op = make_operator(task, (2, 11, 9), kernel_size=5)
    k = op.kernel
    assert k.shape == (5, 5) and abs(k.sum().item() - 1) < 1e-12 and bool((k >= 0).all())
    x = torch.rand(2, 2, 11, 9, dtype=torch.float64)
    expect = torch.zeros_like(x)
    for i in range(5):
        for j in range(5):
            expect += k[i, j] * torch.roll(x, (i - 2, j - 2), (-2, -1))
    assert_close(op(x), expect, 1e-13, 0, "circular convolution")


def test_blur_kernel_scaling():
    """DPS: 61 x 61, sigma 3 at 256 px; scaled with the side."""
    big = make_operator("deblur_gauss", (1, 256, 256))
    assert big.kernel.shape == (61, 61)
    t = torch.arange(61, dtype=torch.float64) - 30
    g = torch.exp(-t ** 2 / (2 * 3.0 ** 2))
    assert_close(big.kernel, torch.outer(g, g) / g.sum() ** 2, 1e-15, 0, "sigma 3 at 256")
    assert make_operator("deblur_gauss", (1, 64, 64)).kernel.shape == (15, 15)
    assert make_operator("deblur_motion", (1, 64, 64)).kernel.shape == (15, 15)
    assert make_operator("deblur_gauss", (1, 8, 8)).kernel.shape == (3, 3)


def test_motion_kernel():
    k = motion_kernel(31, 0.5, generator=torch.Generator().manual_seed(0))
    again = motion_kernel(31, 0.5, generator=torch.Generator().manual_seed(0))
    other = motion_kernel(31, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(k, again) and not torch.equal(k, other)
    assert abs(k.sum().item() - 1) < 1e-12 and bool((k >= 0).all())
    # the kernel's spread across its main direction: the width of a straight streak for intensity 0,
    # more for bent paths
    ii, jj = torch.meshgrid(torch.arange(31.0, dtype=torch.float64), torch.arange(31.0, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack([ii, jj], -1).reshape(-1, 2)

    def minor_variance(kernel):
        w = kernel.reshape(-1)
        mu = (w[:, None] * pts).sum(0)
        return torch.linalg.eigvalsh(((pts - mu).T * w) @ (pts - mu))[0].item()

    straight = [minor_variance(motion_kernel(31, 0.0, generator=torch.Generator().manual_seed(s))) for s in range(8)]
    bent = [minor_variance(motion_kernel(31, 1.0, generator=torch.Generator().manual_seed(s))) for s in range(8)]
    assert max(straight) < 0.4, straight           # under a pixel wide (splat, softening and pooling)
    assert sum(bent) > 2 * sum(straight), (bent, straight)


def test_phase_retrieval():
    op = make_operator("phase", (3, 256, 256))
    assert op.out_shape == (3, 384, 384), "DPS pads 256 to 384 for oversample 2"
    op = make_operator("phase", (2, 8, 12))
    assert op.out_shape == (2, 12, 18) and not op.linear and op.spectral is None
    x = torch.rand(2, 2, 8, 12, dtype=torch.float64)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (3, 3)))
    expect = np.abs(np.fft.fftshift(np.fft.fft2(padded), axes=(-2, -1))) / math.sqrt(12 * 18)
    assert_close(op(x), torch.from_numpy(expect), 1e-12, 0, "|F pad x|")
    assert op(x.float()).dtype == torch.float32
    assert op(torch.zeros(0, 2, 8, 12)).shape == (0, 2, 12, 18)
    with pytest.raises(ValueError, match="nonlinear"):
        require_linear(op, "ddrm")
    with pytest.raises(ValueError, match="nonlinear"):
        require_spectral(op, "pigdm")
    with pytest.raises(NotImplementedError):
        op.adjoint(op(x))
    with pytest.raises(NotImplementedError):
        op.pinv(op(x))
    assert require_spectral(make_operator("sr4", (3, 8, 8)), "ddrm") is not None


@pytest.mark.parametrize("case", CASES[::3], ids=IDS[::3])
def test_prior_space_of_linear_operators(case):
    """Problem.prior_space(): A(2x - 1) = 2 A(x) - A(1), so y' = 2 y - A(1) is A'(2x - 1); sigma doubles."""
    op = _make(case)
    x = torch.rand(2, *op.in_shape, dtype=torch.float64)
    problem = Problem(op, op(x), 0.05)
    prior = problem.prior_space()
    assert prior.operator is op
    assert_close(prior.y, op(2 * x - 1), 1e-12, 0, "y in [-1, 1] space")
    assert prior.sigma_y == pytest.approx(0.1)


def test_prior_space_of_phase_wraps_the_operator():
    op = make_operator("phase", (1, 8, 8))
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    prior = Problem(op, op(x), 0.05).prior_space()
    assert not prior.operator.linear and prior.sigma_y == 0.05 and torch.equal(prior.y, op(x))
    assert_close(prior.operator(2 * x - 1), op(x), 1e-12, 0, "A'(2x - 1) = A(x)")


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown task 'sr3'"):
        make_operator("sr3", (3, 8, 8))
    with pytest.raises(TypeError, match="task"):
        make_operator(4, (3, 8, 8))
    with pytest.raises(ValueError, match="in_shape"):
        make_operator("sr2", (8, 8))
    with pytest.raises(TypeError, match="in_shape"):
        make_operator("sr2", (3, 8.0, 8))
    with pytest.raises(ValueError, match="in_shape"):
        make_operator("sr2", (3, 0, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        make_operator("sr4", (3, 10, 12))
    with pytest.raises(ValueError, match="divisible by 4"):
        make_operator("sr4_bicubic", (3, 12, 10))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        make_operator("colorize", (1, 8, 8))
    with pytest.raises(TypeError, match="unexpected option.*sigma"):
        make_operator("sr2", (3, 8, 8), sigma=1.0)
    with pytest.raises(ValueError, match="kernel_size"):
        make_operator("deblur_gauss", (3, 8, 8), kernel_size=4)
    with pytest.raises(ValueError, match="kernel_size"):
        make_operator("deblur_gauss", (3, 8, 8), kernel_size=9)
    with pytest.raises(ValueError, match="sigma"):
        make_operator("deblur_gauss", (3, 8, 8), sigma=0.0)
    with pytest.raises(ValueError, match="intensity"):
        make_operator("deblur_motion", (3, 8, 8), intensity=1.5)
    with pytest.raises(ValueError, match="rcond"):
        make_operator("deblur_motion", (3, 8, 8), rcond=-1.0)
    with pytest.raises(ValueError, match="missing"):
        make_operator("inpaint_random", (3, 8, 8), missing=1.5)
    with pytest.raises(ValueError, match="box"):
        make_operator("inpaint_box", (3, 8, 8), box=9)
    with pytest.raises(TypeError, match="box"):
        make_operator("inpaint_box", (3, 8, 8), box="big")
    with pytest.raises(ValueError, match="oversample"):
        make_operator("phase", (3, 8, 8), oversample=-2)
    with pytest.raises(TypeError, match="generator"):
        make_operator("inpaint_random", (3, 8, 8), generator=0)
    op = make_operator("sr2", (3, 8, 8))
    with pytest.raises(ValueError, match="x must be \\[B, 3, 8, 8\\]"):
        op(torch.rand(1, 3, 8, 6))
    with pytest.raises(TypeError, match="floating-point"):
        op(torch.ones(1, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="y must be \\[B, 3, 4, 4\\]"):
        op.adjoint(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="y must be"):
        op.pinv(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="c must be \\[B, 192\\]"):
        op.spectral.V(torch.rand(1, 191))
    with pytest.raises(TypeError, match="kernel"):
        CircularBlur([[1.0]], (1, 4, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES[::2], ids=IDS[::2])
def test_cuda_matches_cpu(case):
    op = _make(case)
    x = torch.rand(2, *op.in_shape)
    y = torch.rand(2, *op.out_shape)
    n = math.prod(op.in_shape)
    c = torch.randn(2, n)
    view = op.spectral
    for f, a in [(op.forward, x), (op.adjoint, y), (op.pinv, y), (view.Vt, x), (view.V, c), (view.Ut, y),
                 (view.U, c)]:
        out = f(a.cuda())
        assert out.is_cuda
        assert_close(out.cpu(), f(a), 1e-5, 1e-5, getattr(f, "__name__", "f"))


@pytest.mark.parametrize("task", ["sr4", "sr4_bicubic", "inpaint_box", "inpaint_random", "deblur_gauss",
                                  "deblur_motion", "colorize"])
def test_spectral_views_stay_implicit_at_256px(task):
    """DDRM's published code builds dense SVDs that do not fit at larger sizes; ours never hold more
    than a few images' worth of numbers. At 3 x 256 x 256 (n = 196608; a dense V would be 155 GB in
    float32) the view is exact (``U s V^T x = A x``, ``V V^T x = x``) and every tensor it keeps is
    small."""
    op = make_operator(task, (3, 256, 256), generator=torch.Generator().manual_seed(0))
    view = op.spectral
    n = 3 * 256 * 256
    x = torch.rand(2, 3, 256, 256, dtype=torch.float64)
    c = view.Vt(x)
    assert c.shape == (2, n)
    assert_close(view.V(c), x, 1e-10, 1e-10, f"{task}: V V^T x")
    s = view.singulars(dtype=torch.float64)
    assert_close(view.U(s * c), op.forward(x), 1e-9, 1e-9, f"{task}: U s V^T x")
    kept = [v.numel() for v in list(vars(view).values()) + list(vars(op).values()) if torch.is_tensor(v)]
    assert max(kept, default=0) <= 4 * n, f"{task}: keeps a tensor of {max(kept)} numbers"
