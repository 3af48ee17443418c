"""Classical baselines: each beats a naive reconstruction on smooth random images (fixed seeds), the harmonic
fill is harmonic, HIO fits the measured magnitudes, and bad inputs raise clear errors."""

import pytest
import torch
import torch.nn.functional as F

from pyengine.inverse.base import Operator, Problem
from pyengine.inverse.baselines import baseline, harmonic_fill, hio, wiener_deconvolve
from pyengine.inverse.operators import TASKS, make_operator
from tests.helpers import assert_close


def smooth_images(B, C, H, W, cutoff=0.12, seed=0, dtype=torch.float64):
    """Low-pass filtered Gaussian noise (Gaussian spectrum of ``cutoff`` cycles per pixel), mean 0.5, std 0.2."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    f2 = torch.fft.fftfreq(H, dtype=torch.float64)[:, None] ** 2 + torch.fft.fftfreq(W, dtype=torch.float64) ** 2
    x = torch.fft.ifft2(torch.fft.fft2(noise) * torch.exp(-f2 / (2 * cutoff ** 2))).real
    x = (x - x.mean((-2, -1), keepdim=True)) / x.std((-2, -1), keepdim=True)
    return (0.5 + 0.2 * x).clamp(0, 1).to(dtype)


def psnr(a, b):
    return -10 * torch.log10(((a.double() - b.double()) ** 2).mean()).item()


def _measure(task, x, noise=0.0, seed=1, **options):
    op = make_operator(task, tuple(x.shape[1:]), **options)
    y = op(x)
    if noise:
        y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return op, Problem(op, y, noise)


@pytest.mark.parametrize("task", ["sr2", "sr4", "sr4_bicubic"])
def test_bicubic_upsampling_beats_nearest(task):
    x = smooth_images(2, 3, 32, 32)
    op, problem = _measure(task, x)
    nearest = F.interpolate(problem.y, scale_factor=op.factor, mode="nearest")
    assert psnr(baseline(problem), x) > psnr(nearest, x) + 0.3


@pytest.mark.parametrize("task", ["inpaint_box", "inpaint_random"])
def test_harmonic_fill_beats_naive_fills(task):
    x = smooth_images(2, 3, 32, 32)
    op, problem = _measure(task, x)
    mask = op.mask
    zeros = problem.y
    mean = torch.where(mask > 0, problem.y, (problem.y * mask).sum((-2, -1), keepdim=True) / mask.sum())
    out = baseline(problem)
    assert psnr(out, x) > psnr(zeros, x) + 3
    assert psnr(out, x) > psnr(mean, x) + (0.3 if task == "inpaint_box" else 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_harmonic_fill_is_harmonic(dtype):
    """At every missing pixel the fill is the mean of its in-image neighbours; known pixels are kept."""
    x = smooth_images(2, 2, 13, 10, dtype=dtype)
    mask = (torch.rand(2, 13, 10, generator=torch.Generator().manual_seed(3)) > 0.6).to(dtype)
    mask[1, :, :5] = 0                                       # a large hole too
    u = harmonic_fill(x * mask, mask)
    assert u.dtype == dtype
    assert_close(u * mask, x * mask, 0, 0, "known pixels")
    ones = torch.ones(1, 1, 13, 10, dtype=torch.float64)
    p = F.pad(u.double(), (1, 1, 1, 1))
    nb_sum = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    q = F.pad(ones, (1, 1, 1, 1))
    nb_count = q[..., :-2, 1:-1] + q[..., 2:, 1:-1] + q[..., 1:-1, :-2] + q[..., 1:-1, 2:]
    missing = mask.double() == 0
    err = ((u.double() - nb_sum / nb_count).abs() * missing).max().item()
    assert err < (1e-8 if dtype == torch.float64 else 1e-4), err


def test_harmonic_fill_edge_cases():
    y = torch.rand(1, 2, 5, 6, dtype=torch.float64)
    assert_close(harmonic_fill(y, torch.ones(5, 6)), y, 0, 0, "nothing missing")
    mask = torch.ones(2, 5, 6)
    mask[1] = 0
    out = harmonic_fill(y, mask)
    assert_close(out[:, 1], torch.full_like(out[:, 1], 0.5), 0, 0, "a channel with no known pixel")
    assert harmonic_fill(y[:0], mask).shape == (0, 2, 5, 6)


@pytest.mark.parametrize("task", ["deblur_gauss", "deblur_motion"])
def test_wiener_beats_the_blurred_image_and_the_pseudo_inverse(task):
    x = smooth_images(2, 3, 32, 32)
    options = {"sigma": 1.5} if task == "deblur_gauss" else {"intensity": 0.5}
    op, problem = _measure(task, x, noise=0.01, kernel_size=9, **options)
    out = baseline(problem)
    assert psnr(out, x) > psnr(problem.y, x) + 2
    assert psnr(out, x) > psnr(op.pinv(problem.y).clamp(0, 1), x)


def test_wiener_without_noise_inverts_a_well_posed_blur():
    """With a blur whose spectrum stays well away from 0, Wiener at sigma_y = 0 is close to the exact inverse."""
    x = smooth_images(1, 1, 16, 16)
    k = torch.tensor([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]], dtype=torch.float64)
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), k[None, None])   # symmetric kernel: conv = correlation
    out = wiener_deconvolve(y, k, 0.0)
    assert psnr(out, x) > 40, psnr(out, x)


def test_colorize_baseline_is_grey():
    x = smooth_images(2, 3, 16, 16)
    op, problem = _measure("colorize", x)
    out = baseline(problem)
    assert_close(out, x.mean(1, keepdim=True).expand(-1, 3, -1, -1), 0, 0, "grey replicated")
    assert psnr(out, x) > psnr(torch.zeros_like(x), x)


def test_hio_recovers_a_small_image():
    """From noiseless magnitudes, HIO fits the data (residual) and finds the image up to the twin ambiguity,
    far better than a random start."""
    x = smooth_images(2, 1, 8, 8, cutoff=0.2, seed=4)
    op, problem = _measure("phase", x)
    out = baseline(problem, generator=torch.Generator().manual_seed(0))
    rand = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)

    def residual(z):
        return ((op(z) - problem.y).norm() / problem.y.norm()).item()

    def error(z):
        return min((z - x).norm().item(), (z.flip(-2, -1) - x).norm().item())

    assert residual(out) < 0.02 * residual(rand), (residual(out), residual(rand))
    assert error(out) < 0.05 * error(rand), (error(out), error(rand))


def test_hio_aligns_channels():
    """The channels of a colour image come back with the same orientation (none rotated against the others)."""
    grey = smooth_images(1, 1, 8, 8, cutoff=0.2, seed=4)
    x = torch.cat([grey, 0.9 * grey, 0.8 * grey + 0.1], 1)
    op, problem = _measure("phase", x)
    out = hio(problem.y, (8, 8), restarts=8)
    flips = [bool((out[:, c] - x[:, c]).norm() > (out[:, c].flip(-2, -1) - x[:, c]).norm()) for c in range(3)]
    assert len(set(flips)) == 1, flips


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 2])
def test_baseline_every_task(dtype, batch):
    x = smooth_images(max(batch, 1), 3, 16, 16, dtype=dtype)[:batch]
    for task in TASKS:
        op, problem = _measure(task, x, noise=0.01 if batch else 0.0)
        out = baseline(problem)
        assert out.shape == x.shape and out.dtype == dtype, task
        if batch:
            assert bool(((out >= 0) & (out <= 1)).all()), task


def test_bad_inputs():
    with pytest.raises(TypeError, match="Problem"):
        baseline(torch.rand(1, 3, 8, 8))
    op = make_operator("phase", (1, 8, 8))
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(TypeError, match="prior_space"):
        baseline(Problem(op, op(x), 0.0).prior_space())

    class Other(Operator):
        name, in_shape = "denoise", (1, 8, 8)

    with pytest.raises(ValueError, match="'denoise'"):
        baseline(Problem(Other(), x, 0.0))
    sr = make_operator("sr2", (1, 8, 8))
    with pytest.raises(ValueError, match="problem.y must be \\[B, 1, 4, 4\\]"):
        baseline(Problem(sr, x, 0.0))
    with pytest.raises(ValueError, match="mask"):
        harmonic_fill(x, torch.ones(7, 8))
    with pytest.raises(ValueError, match="size"):
        hio(op(x), (9, 8))
    with pytest.raises(ValueError, match="beta"):
        hio(op(x), (8, 8), beta=1.5)
    with pytest.raises(TypeError, match="kernel"):
        wiener_deconvolve(x, [[1.0]], 0.0)
