"""Measurement operators of the inverse-problem tasks: forward, true adjoint, pseudo-inverse and,
where the operator has one, an exact implicit SVD (:class:`~pyengine.inverse.base.SpectralView`).

Images are ``[B, C, H, W]`` in [0, 1] units (``B >= 0``; float32 or float64, any device). Every
operator keeps its constants in float64 and casts them once per device and dtype.

Tasks, their forward map ``y = A x`` and measurement shape:

- ``sr2``, ``sr4``: mean of each k x k block (average pooling), ``[B, C, H / k, W / k]``; spectral view.
- ``sr4_bicubic``: separable antialiased bicubic x4 downsampling, ``[B, C, H / 4, W / 4]``; spectral view.
- ``inpaint_box``, ``inpaint_random``: ``x`` times a 0/1 mask, ``[B, C, H, W]``; spectral view.
- ``deblur_gauss``, ``deblur_motion``: circular convolution, ``[B, C, H, W]``; spectral view.
- ``colorize``: mean of the three channels, ``[B, 1, H, W]``; spectral view.
- ``phase``: oversampled Fourier magnitude ``|F(pad(x))|``, ``[B, C, H', W']``; nonlinear, none.

Conventions, task by task (``make_operator`` options in brackets):

- ``sr2``/``sr4``: ``y[i, j] = mean(x[k i : k i + k, k j : k j + k])``; ``H`` and ``W`` divisible by ``k``.
  ``A^T y`` = nearest upsampling / k^2, ``A^+ y`` = nearest upsampling. SVD: per block, a 2-D
  orthonormal DCT-II (``kron(D_k, D_k)``), whose first row is the block sum / k, is ``V^T``; the
  one nonzero singular value per block is ``1 / k``; ``U = I``.
- ``sr4_bicubic``: ``A = I_C (x) D_H (x) D_W``, with ``D_n`` ``[n / 4, n]`` the Keys cubic (``a = -0.5``)
  stretched by 4 (16 taps) centred on ``(i + 0.5) 4 - 0.5``; taps outside the image are dropped and
  each row renormalised to sum 1 (PIL's ``Image.resize(BICUBIC)`` on a float image). SVD from the two
  small 1-D SVDs: ``D = U_1 S_1 V_1^T`` so ``A = (U_H (x) U_W)(S_H (x) S_W)(V_H (x) V_W)^T``.
- ``inpaint_box`` [``box``: int or ``(h, w)``, default ``(H // 2, W // 2)``]: the box rows
  ``(H - h) // 2 ... + h`` and columns ``(W - w) // 2 ... + w`` are zeroed in every channel. ``y`` keeps the
  image's shape with zeros on the missing pixels (DPS's convention), so ``A = A^T = A^+ = diag(mask)``
  and the SVD is the identity basis with ``s = mask``.
- ``inpaint_random`` [``missing``: fraction, default 0.7]: exactly ``round(missing H W)`` pixels,
  drawn without replacement by ``torch.randperm`` with ``generator`` (``None``: seed 0), are zeroed
  in every channel; otherwise as ``inpaint_box``.
- ``deblur_gauss`` [``kernel_size``, ``sigma``, ``rcond``]: DPS uses a 61 x 61 kernel with ``sigma = 3``
  at 256 px; here both scale with ``s = min(H, W) / 256``: ``sigma = 3 s`` and ``kernel_size`` is the odd
  number nearest ``61 s`` (at least 3, at most the image side). The truncated Gaussian is normalised
  to sum 1.
- ``deblur_motion`` [``kernel_size``, ``intensity`` = 0.5, ``rcond``]: a random-trajectory kernel
  (:func:`motion_kernel`, seeded by ``generator``, ``None``: seed 0) of the same scaled size.
- Both blurs are circular convolutions ``y = k * x`` (kernel centred on its middle pixel, periodic
  boundary), applied by FFT. Their SVD is real and exact: ``V^T`` is the unitary 2-D DFT written as
  real coefficients (``Re X`` at the self-conjugate frequencies, ``sqrt(2) Re X`` and ``sqrt(2) Im X``
  at one frequency of each conjugate pair); ``s = |K|`` (``K`` the kernel's DFT, computed in float64,
  values below float64 FFT round-off set to exactly 0); ``U`` is ``V`` rotated by the phase of ``K``.
  ``pinv`` is the pseudo-inverse of the rank-truncated operator: frequencies with
  ``|K| <= rcond max|K|`` (``rcond`` default 1e-4) are dropped, i.e. ``torch.linalg.pinv(A, rtol=rcond)``.
- ``colorize``: ``y = (r + g + b) / 3`` (mean, not luminance), ``C = 3``. ``A^+ y`` replicates ``y``.
  SVD: per pixel the orthonormal colour basis ``(1, 1, 1) / sqrt 3``, ``(1, -1, 0) / sqrt 2``,
  ``(1, 1, -2) / sqrt 6``; ``s = 1 / sqrt 3`` on the first.
- ``phase`` [``oversample`` = 2.0]: DPS's code: zero-pad each side by ``floor(oversample / 8 * side)``
  pixels (1.5 x the side for ``oversample = 2``, as DPS pads 256 to 384), then ``y = |fftshift(F x)|``
  with the unitary (``norm="ortho"``) 2-D DFT, per channel. Nonlinear: no adjoint, pinv or SVD.

Spectral coefficient vectors are ``[B, n]``, ``n = C H W``; the views document their order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pyengine.inverse.base import Operator, SpectralView

TASKS = ("sr2", "sr4", "sr4_bicubic", "inpaint_box", "inpaint_random", "deblur_gauss", "deblur_motion",
         "colorize", "phase")

_OPTIONS = {
    "sr2": (), "sr4": (), "sr4_bicubic": (), "colorize": (),
    "inpaint_box": ("box",), "inpaint_random": ("missing",),
    "deblur_gauss": ("kernel_size", "sigma", "rcond"), "deblur_motion": ("kernel_size", "intensity", "rcond"),
    "phase": ("oversample",),
}


def make_operator(task: str, in_shape: Sequence[int] = (3, 256, 256), *, generator: torch.Generator | None = None,
                  **options) -> Operator:
    """The measurement operator of ``task`` (one of :data:`TASKS`) on images ``[B, *in_shape]``.

    Args:
        task: the task name; it becomes ``Operator.name``.
        in_shape: ``(C, H, W)`` of the images.
        generator: draws the random parts (``inpaint_random``'s mask, ``deblur_motion``'s kernel);
            ``None`` uses a fresh generator seeded 0, so the default operator is always the same.
        **options: per task, see the module docstring (``box``, ``missing``, ``kernel_size``, ``sigma``,
            ``intensity``, ``rcond``, ``oversample``).

    Example:
        >>> op = make_operator("sr4", (3, 64, 64))
        >>> op(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 3, 16, 16])
    """
    if not isinstance(task, str):
        raise TypeError(f"make_operator: task must be a str, got {type(task).__name__}")
    if task not in TASKS:
        raise ValueError(f"make_operator: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    shape = _image_shape(in_shape)
    unknown = sorted(set(options) - set(_OPTIONS[task]))
    if unknown:
        allowed = ", ".join(_OPTIONS[task]) or "none"
        raise TypeError(f"make_operator({task!r}): unexpected option(s) {', '.join(unknown)} (allowed: {allowed})")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"make_operator: generator must be a torch.Generator or None, got {type(generator).__name__}")
    C, H, W = shape

    if task in ("sr2", "sr4"):
        return AvgPoolSR(int(task[2]), shape, name=task)
    if task == "sr4_bicubic":
        return BicubicSR(4, shape, name=task)
    if task == "colorize":
        return Colorize(shape)
    if task == "phase":
        return PhaseRetrieval(shape, oversample=options.get("oversample", 2.0))
    if task == "inpaint_box":
        return Inpaint(box_mask(H, W, options.get("box")), shape, name=task)
    if task == "inpaint_random":
        return Inpaint(random_mask(H, W, options.get("missing", 0.7), generator=generator), shape, name=task)

    scale = min(H, W) / 256.0
    size = options.get("kernel_size")
    if size is None:
        size = min(max(3, 2 * round((61 * scale - 1) / 2) + 1), _largest_odd(min(H, W)))
    size = _positive_int(size, "kernel_size", task)
    if size % 2 == 0 or size > min(H, W):
        raise ValueError(f"make_operator({task!r}): kernel_size must be odd and at most the image side "
                         f"{min(H, W)}, got {size}")
    rcond = options.get("rcond", 1e-4)
    if task == "deblur_gauss":
        kernel = gaussian_kernel(size, options.get("sigma", 3.0 * scale))
    else:
        kernel = motion_kernel(size, options.get("intensity", 0.5), generator=generator)
    return CircularBlur(kernel, shape, name=task, rcond=rcond)


# -- kernels and masks ------------------------------------------------------------------------------

def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """``[size, size]`` float64 Gaussian, centred on the middle pixel, truncated and normalised to sum 1."""
    size = _positive_int(size, "kernel_size", "gaussian_kernel")
    sigma = _positive_float(sigma, "sigma", "gaussian_kernel")
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    k = torch.outer(g, g)
    return k / k.sum()


def motion_kernel(size: int, intensity: float = 0.5, *, generator: torch.Generator | None = None,
                  steps: int = 64) -> torch.Tensor:
    """``[size, size]`` float64 random camera-shake kernel (non-negative, sums to 1), after the model
    of DPS's motion-blur library (a random path drawn and softened), with its own sampler:

    1. path length ``L = 0.75 sqrt(2) S (u0 + intensity^2 u1)`` (at least ``0.1 S``) on a 2x supersampled
       canvas of side ``S = 2 size``; ``steps`` segments with Exp(1) lengths scaled to total ``L``;
    2. segment directions ``phi + s_i a_i``: ``phi ~ U(0, 2 pi)`` a global rotation, ``a_i ~ U(0, A)``
       with ``A ~ U(0, intensity pi)`` (``intensity = 0`` gives a straight streak), signs ``s_i`` that
       flip with a probability ``~ U(0, 0.2)`` per step;
    3. the path is centred on the mean of its vertices, sampled every 1/4 canvas pixel and splatted
       bilinearly (parts off the canvas are dropped), softened by a Gaussian of
       ``sigma = 0.01 S sqrt 2`` (at least 0.5), averaged 2 x 2 down to ``size`` and normalised.

    Args:
        size: the kernel's side (odd, so it has a middle pixel).
        intensity: in [0, 1]; 0 a straight line, 1 long, strongly bent paths. DPS uses 0.5.
        generator: the random draws (``None``: a generator seeded 0); the kernel is built on its device.
        steps: the number of path segments.

    Returns:
        ``[size, size]`` float64 kernel.
    """
    size = _positive_int(size, "kernel_size", "motion_kernel")
    intensity = float(intensity)
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"motion_kernel: intensity must be in [0, 1], got {intensity}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    dev = generator.device
    f64 = dict(dtype=torch.float64, device=dev)

    def rand(*shape):
        return torch.rand(shape, generator=generator, **f64)

    S = 2 * size
    u = rand(6)
    length = torch.clamp(0.75 * math.sqrt(2) * S * (u[0] + intensity ** 2 * u[1]), min=0.1 * S)
    seg = -torch.log1p(-rand(steps))                       # Exp(1) segment lengths
    seg = seg / seg.sum() * length
    bend = rand(steps) * (u[2] * intensity * math.pi)
    flips = (rand(steps) < 0.2 * u[3]).to(torch.float64)
    sign = torch.where(u[4] < 0.5, -1.0, 1.0) * (1 - 2 * (torch.cumsum(flips, 0) % 2))
    angle = 2 * math.pi * u[5] + sign * bend
    steps_xy = torch.stack([seg * torch.cos(angle), seg * torch.sin(angle)], -1)
    verts = torch.cat([torch.zeros(1, 2, **f64), torch.cumsum(steps_xy, 0)])
    verts = verts - verts.mean(0) + S / 2                  # canvas coordinates; pixel j covers [j, j + 1)

    arc = torch.cat([torch.zeros(1, **f64), torch.cumsum(seg, 0)])
    n = int(math.ceil(4 * float(length))) + 2
    t = torch.linspace(0, 1, n, **f64) * arc[-1]
    i = torch.clamp(torch.searchsorted(arc, t, right=True) - 1, 0, steps - 1)
    w = ((t - arc[i]) / seg[i].clamp_min(1e-12)).clamp(0, 1)[:, None]
    pts = verts[i] * (1 - w) + verts[i + 1] * w - 0.5     # to pixel-centre coordinates
    canvas = _splat(pts, S)

    sig = max(0.5, 0.01 * S * math.sqrt(2))
    r = int(math.ceil(3 * sig))
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, **f64) / sig) ** 2)
    g = (g / g.sum()).view(1, 1, -1)
    img = canvas.view(1, 1, S, S)
    img = F.conv2d(F.pad(img, (r, r, 0, 0)), g.view(1, 1, 1, -1))
    img = F.conv2d(F.pad(img, (0, 0, r, r)), g.view(1, 1, -1, 1))
    k = F.avg_pool2d(img, 2)[0, 0]
    total = k.sum()
    if not total > 0:                                     # cannot happen (the path is centred), but stay safe
        k = torch.zeros(size, size, **f64)
        k[size // 2, size // 2] = 1
        return k
    return k / total


def _splat(pts: torch.Tensor, S: int) -> torch.Tensor:
    """``[S, S]`` bilinear splat of unit-mass points ``pts`` ``[N, 2]`` (x, y) in pixel-centre coordinates."""
    x0, y0 = torch.floor(pts[:, 0]), torch.floor(pts[:, 1])
    fx, fy = pts[:, 0] - x0, pts[:, 1] - y0
    canvas = torch.zeros(S * S, dtype=pts.dtype, device=pts.device)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        ok = (xi >= 0) & (xi < S) & (yi >= 0) & (yi < S)
        canvas.index_add_(0, (yi * S + xi)[ok], w[ok])
    return canvas.view(S, S)


def box_mask(H: int, W: int, box: int | Sequence[int] | None = None) -> torch.Tensor:
    """``[H, W]`` float64 mask, 1 = kept, with a centred ``box`` (int or ``(h, w)``; default half the sides) of 0."""
    if box is None:
        bh, bw = H // 2, W // 2
    elif isinstance(box, int) and not isinstance(box, bool):
        bh = bw = box
    elif isinstance(box, Sequence) and len(box) == 2:
        bh, bw = box
    else:
        raise TypeError(f"inpaint_box: box must be an int or a pair (h, w), got {box!r}")
    bh, bw = _positive_int(bh, "box", "inpaint_box", zero=True), _positive_int(bw, "box", "inpaint_box", zero=True)
    if bh > H or bw > W:
        raise ValueError(f"inpaint_box: box {(bh, bw)} is larger than the image {(H, W)}")
    mask = torch.ones(H, W, dtype=torch.float64)
    top, left = (H - bh) // 2, (W - bw) // 2
    mask[top:top + bh, left:left + bw] = 0
    return mask


def random_mask(H: int, W: int, missing: float = 0.7, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[H, W]`` float64 mask, 1 = kept, with exactly ``round(missing H W)`` random pixels 0.

    Built on ``generator``'s device (``None``: a CPU generator seeded 0)."""
    missing = float(missing)
    if not 0.0 <= missing <= 1.0:
        raise ValueError(f"inpaint_random: missing must be a fraction in [0, 1], got {missing}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    order = torch.randperm(H * W, generator=generator, device=generator.device)
    mask = torch.ones(H * W, dtype=torch.float64, device=generator.device)
    mask[order[:round(missing * H * W)]] = 0
    return mask.view(H, W)


def bicubic_matrix(n: int, factor: int, a: float = -0.5) -> torch.Tensor:
    """``[n // factor, n]`` float64 antialiased bicubic downsampling matrix (Keys cubic with parameter ``a``
    stretched by ``factor``, output ``i`` centred on input ``(i + 0.5) factor - 0.5``, taps outside
    ``[0, n)`` dropped and each row renormalised to sum 1: PIL's ``resize(BICUBIC)``)."""
    centre = (torch.arange(n // factor, dtype=torch.float64) + 0.5) * factor - 0.5
    t = ((torch.arange(n, dtype=torch.float64)[None, :] - centre[:, None]) / factor).abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    w = torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))
    return w / w.sum(1, keepdim=True)


def kernel_transfer(kernel: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``[H, W]`` complex128 DFT (unnormalised) of ``kernel`` ``[kh, kw]`` as a circular convolution on
    ``H x W`` images, the kernel's middle pixel ``(kh // 2, kw // 2)`` at the origin: ``F(k * x) = K F(x)``."""
    if not isinstance(kernel, torch.Tensor) or kernel.dim() != 2:
        raise TypeError("kernel must be a 2-D torch.Tensor [kh, kw]")
    kh, kw = kernel.shape
    if kh > H or kw > W or kh == 0 or kw == 0:
        raise ValueError(f"kernel of shape {(kh, kw)} must be non-empty and fit in the image {(H, W)}")
    pad = torch.zeros(H, W, dtype=torch.float64, device=kernel.device)
    rows = (torch.arange(kh, device=kernel.device) - kh // 2) % H
    cols = (torch.arange(kw, device=kernel.device) - kw // 2) % W
    pad.index_put_((rows[:, None], cols[None, :]), kernel.to(torch.float64), accumulate=True)
    return torch.fft.fft2(pad)


# -- operators --------------------------------------------------------------------------------------

class LinearOperator(Operator):
    """A linear operator ``[B, *in_shape] -> [B, *out_shape]`` with float64 constants cast on first use."""

    linear = True
    out_shape: tuple[int, ...]

    def __init__(self, name: str, in_shape: tuple[int, int, int], out_shape: tuple[int, ...], **constants):
        self.name, self.in_shape, self.out_shape = name, tuple(in_shape), tuple(out_shape)
        self._consts = _Constants(**constants)

    def check_measurement(self, y: torch.Tensor, what: str = "y") -> None:
        """ValueError/TypeError naming ``what`` unless ``y`` is a floating ``[B, *out_shape]`` tensor."""
        _check(self.name, y, self.out_shape, what)

    def const(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The constant ``name`` on ``like``'s device, in its dtype (complex constants: the matching complex dtype)."""
        return self._consts(name, like)


class AvgPoolSR(LinearOperator):
    """Average-pooling super-resolution: ``y = mean of each factor x factor block`` ``[B, C, H/k, W/k]``."""

    def __init__(self, factor: int, in_shape: Sequence[int], name: str | None = None):
        C, H, W = _image_shape(in_shape)
        k = self.factor = _positive_int(factor, "factor", "AvgPoolSR")
        if H % k or W % k:
            raise ValueError(f"{name or 'sr'}: in_shape {(C, H, W)} must have H and W divisible by {k}")
        super().__init__(name or f"sr{k}", (C, H, W), (C, H // k, W // k), dct=_dct_matrix(k))
        self._spectral = _BlockSpectral(self)

    def forward(self, x):
        self.check_image(x)
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y):
        self.check_measurement(y)
        k = self.factor
        return y.repeat_interleave(k, -2).repeat_interleave(k, -1) / (k * k)

    def pinv(self, y):
        """``A^+ y = A^T (A A^T)^{-1} y``: nearest upsampling (``A A^T = I / k^2``)."""
        self.check_measurement(y)
        return y.repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)

    @property
    def spectral(self):
        return self._spectral


class BicubicSR(LinearOperator):
    """Bicubic downsampling by ``factor``: ``y[c] = D_H x[c] D_W^T`` with :func:`bicubic_matrix`."""

    def __init__(self, factor: int, in_shape: Sequence[int], name: str | None = None):
        C, H, W = _image_shape(in_shape)
        k = self.factor = _positive_int(factor, "factor", "BicubicSR")
        if H % k or W % k:
            raise ValueError(f"{name or 'sr_bicubic'}: in_shape {(C, H, W)} must have H and W divisible by {k}")
        consts = {}
        for axis, n in (("h", H), ("w", W)):
            D = bicubic_matrix(n, k)
            U, S, Vh = torch.linalg.svd(D, full_matrices=True)
            consts.update({f"D{axis}": D, f"U{axis}": U, f"S{axis}": S, f"V{axis}": Vh.T,
                           f"P{axis}": Vh[:n // k].T @ (U.T / S[:, None])})
        super().__init__(name or f"sr{k}_bicubic", (C, H, W), (C, H // k, W // k), **consts)
        self._spectral = _SeparableSpectral(self)

    def forward(self, x):
        self.check_image(x)
        return torch.einsum("ih,bchw,jw->bcij", self.const("Dh", x), x, self.const("Dw", x))

    def adjoint(self, y):
        self.check_measurement(y)
        return torch.einsum("ih,bcij,jw->bchw", self.const("Dh", y), y, self.const("Dw", y))

    def pinv(self, y):
        """``A^+ = D_H^+ (x) D_W^+`` (both 1-D matrices have full row rank; exact Moore-Penrose)."""
        self.check_measurement(y)
        return torch.einsum("hi,bcij,wj->bchw", self.const("Ph", y), y, self.const("Pw", y))

    @property
    def spectral(self):
        return self._spectral


class Inpaint(LinearOperator):
    """``y = mask * x`` (same shape; ``mask`` ``[H, W]`` or ``[C, H, W]``, 1 = kept, 0 = missing)."""

    def __init__(self, mask: torch.Tensor, in_shape: Sequence[int], name: str = "inpaint"):
        shape = _image_shape(in_shape)
        if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
            raise TypeError(f"{name}: mask must be a [H, W] or [C, H, W] torch.Tensor")
        m = mask.to(torch.float64)
        if m.dim() == 2:
            m = m[None]
        if tuple(m.shape[1:]) != shape[1:] or m.shape[0] not in (1, shape[0]):
            raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} does not fit in_shape {shape}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{name}: mask must hold only 0 and 1")
        super().__init__(name, shape, shape, mask=m)
        self._spectral = _MaskSpectral(self)

    @property
    def mask(self) -> torch.Tensor:
        """``[1 or C, H, W]`` float64 mask, 1 = kept."""
        return self._consts._master["mask"]

    def forward(self, x):
        self.check_image(x)
        return x * self.const("mask", x)

    def adjoint(self, y):
        self.check_measurement(y)
        return y * self.const("mask", y)

    def pinv(self, y):
        """A projection: ``A^+ = A``."""
        return self.adjoint(y)

    @property
    def spectral(self):
        return self._spectral


class CircularBlur(LinearOperator):
    """``y = kernel * x``: circular (periodic) 2-D convolution of each channel, by FFT.

    Args:
        kernel: ``[kh, kw]`` point-spread function, its middle pixel ``(kh // 2, kw // 2)`` at the origin.
        in_shape: ``(C, H, W)``; the kernel must fit in ``H x W``.
        rcond: ``pinv`` drops the frequencies with ``|K| <= rcond max|K|`` (see the module docstring).
    """

    def __init__(self, kernel: torch.Tensor, in_shape: Sequence[int], name: str = "blur", rcond: float = 1e-4):
        shape = _image_shape(in_shape)
        rcond = float(rcond)
        if not 0.0 <= rcond < 1.0:
            raise ValueError(f"{name}: rcond must be in [0, 1), got {rcond}")
        if not isinstance(kernel, torch.Tensor) or kernel.dim() != 2 or not kernel.is_floating_point():
            raise TypeError(f"{name}: kernel must be a floating-point 2-D torch.Tensor [kh, kw]")
        self.rcond = rcond
        self.kernel = kernel.detach().to(torch.float64)
        K = kernel_transfer(self.kernel, shape[1], shape[2])
        mag = K.abs()
        mag = torch.where(mag > 64 * torch.finfo(torch.float64).eps * mag.max(), mag, torch.zeros_like(mag))
        keep = mag > rcond * mag.max()
        K_inv = torch.where(keep, 1 / torch.where(keep, K, torch.ones_like(K)), torch.zeros_like(K))
        rep_idx, scale, self_conj = _real_fourier_basis(shape[1], shape[2], K.device)
        # left singular vectors: the right ones rotated by the phase of K (+-1 where K is real)
        phase = torch.where(mag > 0, K / torch.where(mag > 0, mag, torch.ones_like(mag)), torch.ones_like(K))
        sign = torch.where(K.real < 0, -1.0, 1.0).to(K.dtype)
        phase = torch.where(self_conj, sign, phase)
        half = shape[2] // 2 + 1
        super().__init__(name, shape, shape, K=K[:, :half], K_inv=K_inv[:, :half], phase=phase,
                         idx=rep_idx, scale=scale, s=mag.flatten()[rep_idx // 2])
        self._spectral = _FourierSpectral(self)

    @property
    def transfer(self) -> torch.Tensor:
        """``[H, W // 2 + 1]`` complex128 half spectrum of the kernel (:func:`kernel_transfer`, ``rfft2`` layout)."""
        return self._consts._master["K"]

    def _filter(self, x: torch.Tensor, name: str, conj: bool = False) -> torch.Tensor:
        if x.numel() == 0:
            return x.clone()
        K = self.const(name, x)
        X = torch.fft.rfft2(x)
        return torch.fft.irfft2(X * (K.conj() if conj else K), s=x.shape[-2:])

    def forward(self, x):
        self.check_image(x)
        return self._filter(x, "K")

    def adjoint(self, y):
        self.check_measurement(y)
        return self._filter(y, "K", conj=True)

    def pinv(self, y):
        """Pseudo-inverse of the operator truncated to ``|K| > rcond max|K|`` (Moore-Penrose when ``rcond = 0``)."""
        self.check_measurement(y)
        return self._filter(y, "K_inv")

    @property
    def spectral(self):
        return self._spectral


class Colorize(LinearOperator):
    """``y = (r + g + b) / 3`` ``[B, 1, H, W]`` of RGB images ``[B, 3, H, W]``."""

    def __init__(self, in_shape: Sequence[int], name: str = "colorize"):
        C, H, W = _image_shape(in_shape)
        if C != 3:
            raise ValueError(f"{name}: in_shape must have 3 (RGB) channels, got {C}")
        basis = torch.tensor([[1, 1, 1], [1, -1, 0], [1, 1, -2]], dtype=torch.float64)
        super().__init__(name, (C, H, W), (1, H, W), Q=basis / basis.norm(dim=1, keepdim=True))
        self._spectral = _ColourSpectral(self)

    def forward(self, x):
        self.check_image(x)
        return x.mean(1, keepdim=True)

    def adjoint(self, y):
        self.check_measurement(y)
        return y.expand(-1, 3, -1, -1) / 3

    def pinv(self, y):
        """Grey replicated into the three channels (``A A^T = 1 / 3``)."""
        self.check_measurement(y)
        return y.expand(-1, 3, -1, -1).clone()

    @property
    def spectral(self):
        return self._spectral


class PhaseRetrieval(Operator):
    """``y = |fftshift(F pad(x))|`` ``[B, C, H + 2 ph, W + 2 pw]``, per channel, unitary DFT, zero padding
    ``ph = floor(oversample / 8 * H)``, ``pw = floor(oversample / 8 * W)`` on each side (DPS's convention)."""

    linear = False

    def __init__(self, in_shape: Sequence[int], oversample: float = 2.0, name: str = "phase"):
        C, H, W = _image_shape(in_shape)
        oversample = _positive_float(oversample, "oversample", name)
        self.name, self.in_shape, self.oversample = name, (C, H, W), oversample
        self.pad = (int(oversample / 8 * H), int(oversample / 8 * W))
        self.out_shape = (C, H + 2 * self.pad[0], W + 2 * self.pad[1])

    def forward(self, x):
        self.check_image(x)
        if x.numel() == 0:
            return x.new_zeros((x.shape[0], *self.out_shape))
        ph, pw = self.pad
        spec = torch.fft.fft2(F.pad(x, (pw, pw, ph, ph)), norm="ortho")
        return torch.fft.fftshift(spec.abs(), dim=(-2, -1))


# -- spectral views ---------------------------------------------------------------------------------

class _View(SpectralView):
    """Shared checks; ``op`` provides the cached constants."""

    def __init__(self, op: LinearOperator):
        self.op, self.in_shape, self.out_shape = op, op.in_shape, op.out_shape
        self.n = math.prod(op.in_shape)

    def _coeffs(self, c: torch.Tensor, what: str) -> None:
        _check(self.op.name, c, (self.n,), what)

    def _s_like(self, like: torch.Tensor) -> torch.Tensor:
        return self.singulars(like.device, like.dtype)


class _BlockSpectral(_View):
    """Average pooling. Coefficients ``[B, k, k, C, h, w]`` flattened: DCT frequency ``(p, q)`` of block
    ``(i, j)`` of channel ``c``; the first ``C h w`` (``p = q = 0``, the block sums / k) have ``s = 1 / k``."""

    def singulars(self, device=None, dtype=torch.float32):
        k, m = self.op.factor, math.prod(self.out_shape)
        s = torch.zeros(self.n, device=device, dtype=dtype)
        s[:m] = 1.0 / k
        return s

    def Vt(self, x):
        self.op.check_image(x)
        k, (C, h, w) = self.op.factor, self.out_shape
        D = self.op.const("dct", x)
        blocks = x.reshape(x.shape[0], C, h, k, w, k)
        return torch.einsum("pi,qj,bcyixj->bpqcyx", D, D, blocks).reshape(x.shape[0], self.n)

    def V(self, c):
        self._coeffs(c, "c")
        k, (C, h, w) = self.op.factor, self.out_shape
        D = self.op.const("dct", c)
        coef = c.reshape(c.shape[0], k, k, C, h, w)
        return torch.einsum("pi,qj,bpqcyx->bcyixj", D, D, coef).reshape(c.shape[0], *self.in_shape)

    def Ut(self, y):
        self.op.check_measurement(y)
        flat = y.reshape(y.shape[0], math.prod(self.out_shape))
        return torch.cat([flat, flat.new_zeros(y.shape[0], self.n - flat.shape[1])], 1)

    def U(self, c):
        self._coeffs(c, "c")
        return c[:, :math.prod(self.out_shape)].reshape(c.shape[0], *self.out_shape)


class _SeparableSpectral(_View):
    """Bicubic. Coefficients ``[B, C, H, W]`` flattened: ``V_H^T x[c] V_W``; ``s[c, p, q] = S_H[p] S_W[q]``
    for ``p < h``, ``q < w``, else 0; ``U^T y`` fills the top-left ``h x w`` corner with ``U_H^T y[c] U_W``."""

    def singulars(self, device=None, dtype=torch.float32):
        C, H, W = self.in_shape
        like = torch.empty(0, device=device, dtype=dtype)
        s = torch.outer(self.op.const("Sh", like), self.op.const("Sw", like))
        s = F.pad(s, (0, W - s.shape[1], 0, H - s.shape[0]))
        return s.expand(C, H, W).reshape(-1)

    def Vt(self, x):
        self.op.check_image(x)
        c = torch.einsum("hp,bchw,wq->bcpq", self.op.const("Vh", x), x, self.op.const("Vw", x))
        return c.reshape(x.shape[0], self.n)

    def V(self, c):
        self._coeffs(c, "c")
        c = c.reshape(c.shape[0], *self.in_shape)
        return torch.einsum("hp,bcpq,wq->bchw", self.op.const("Vh", c), c, self.op.const("Vw", c))

    def Ut(self, y):
        self.op.check_measurement(y)
        c = torch.einsum("ip,bcij,jq->bcpq", self.op.const("Uh", y), y, self.op.const("Uw", y))
        (_, H, W), (_, h, w) = self.in_shape, self.out_shape
        return F.pad(c, (0, W - w, 0, H - h)).reshape(y.shape[0], self.n)

    def U(self, c):
        self._coeffs(c, "c")
        _, h, w = self.out_shape
        c = c.reshape(c.shape[0], *self.in_shape)[..., :h, :w]
        return torch.einsum("ip,bcpq,jq->bcij", self.op.const("Uh", c), c, self.op.const("Uw", c))


class _MaskSpectral(_View):
    """Inpainting. ``V = U = I`` (coefficient = pixel, ``[C, H, W]`` order); ``s = mask``."""

    def singulars(self, device=None, dtype=torch.float32):
        like = torch.empty(0, device=device, dtype=dtype)
        return self.op.const("mask", like).expand(self.in_shape).reshape(-1)

    def Vt(self, x):
        self.op.check_image(x)
        return x.reshape(x.shape[0], self.n)

    def V(self, c):
        self._coeffs(c, "c")
        return c.reshape(c.shape[0], *self.in_shape)

    def Ut(self, y):
        self.op.check_measurement(y)
        return (y * self.op.const("mask", y)).reshape(y.shape[0], self.n)

    def U(self, c):
        self._coeffs(c, "c")
        return c.reshape(c.shape[0], *self.in_shape) * self.op.const("mask", c)


class _FourierSpectral(_View):
    """Circular blur. Coefficients ``[B, C, H W]`` flattened: per channel the real unitary-DFT coefficients
    (``_real_fourier_basis`` order); ``s = |K|`` of each coefficient's frequency; ``U`` applies ``V`` to
    the spectrum rotated by ``K / |K|``."""

    def singulars(self, device=None, dtype=torch.float32):
        like = torch.empty(0, device=device, dtype=dtype)
        return self.op.const("s", like).repeat(self.in_shape[0])

    def _analyse(self, x: torch.Tensor, rotate: bool) -> torch.Tensor:
        B, C, H, W = x.shape
        if x.numel() == 0:
            return x.new_zeros(B, self.n)
        X = torch.fft.fft2(x, norm="ortho")
        if rotate:
            X = X * self.op.const("phase", x).conj()
        re = torch.view_as_real(X).reshape(B, C, 2 * H * W)
        c = re.index_select(-1, self.op.const("idx", x)) * self.op.const("scale", x)
        if rotate:
            c = c * (self.op.const("s", x) > 0)
        return c.reshape(B, self.n)

    def _synthesise(self, c: torch.Tensor, rotate: bool) -> torch.Tensor:
        self._coeffs(c, "c")
        B, (C, H, W) = c.shape[0], self.in_shape
        if c.numel() == 0:
            return c.new_zeros(B, C, H, W)
        c = c.reshape(B, C, H * W) * self.op.const("scale", c)
        if rotate:
            c = c * (self.op.const("s", c) > 0)
        Z = c.new_zeros(B, C, 2 * H * W).index_copy_(-1, self.op.const("idx", c), c)
        Z = torch.view_as_complex(Z.reshape(B, C, H, W, 2))
        if rotate:
            Z = Z * self.op.const("phase", c)
        # Z holds one frequency of each conjugate pair at twice its weight: Re(ifft) completes the pair
        return torch.fft.ifft2(Z, norm="ortho").real

    def Vt(self, x):
        self.op.check_image(x)
        return self._analyse(x, rotate=False)

    def V(self, c):
        return self._synthesise(c, rotate=False)

    def Ut(self, y):
        self.op.check_measurement(y)
        return self._analyse(y, rotate=True)

    def U(self, c):
        return self._synthesise(c, rotate=True)


class _ColourSpectral(_View):
    """Colorization. Coefficients ``[B, 3, H, W]`` flattened: per pixel ``Q x`` with the colour basis ``Q``;
    the first ``H W`` (grey, ``sum / sqrt 3``) have ``s = 1 / sqrt 3``."""

    def singulars(self, device=None, dtype=torch.float32):
        s = torch.zeros(self.n, device=device, dtype=dtype)
        s[:self.n // 3] = 3 ** -0.5
        return s

    def Vt(self, x):
        self.op.check_image(x)
        return torch.einsum("pc,bchw->bphw", self.op.const("Q", x), x).reshape(x.shape[0], self.n)

    def V(self, c):
        self._coeffs(c, "c")
        c = c.reshape(c.shape[0], *self.in_shape)
        return torch.einsum("pc,bphw->bchw", self.op.const("Q", c), c)

    def Ut(self, y):
        self.op.check_measurement(y)
        flat = y.reshape(y.shape[0], math.prod(self.out_shape))
        return torch.cat([flat, flat.new_zeros(y.shape[0], self.n - flat.shape[1])], 1)

    def U(self, c):
        self._coeffs(c, "c")
        return c[:, :self.n // 3].reshape(c.shape[0], *self.out_shape)


# -- helpers ----------------------------------------------------------------------------------------

class _Constants:
    """Float64 / complex128 / integer constants, cast and moved once per (device, dtype) of the caller."""

    def __init__(self, **tensors: torch.Tensor):
        self._master, self._cache = tensors, {}

    def __call__(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.device, like.dtype)
        out = self._cache.get(key)
        if out is None:
            m = self._master[name]
            if m.is_complex():
                dtype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
            elif m.is_floating_point():
                dtype = like.dtype
            else:
                dtype = m.dtype
            out = self._cache[key] = m.to(device=like.device, dtype=dtype)
        return out


def _dct_matrix(k: int) -> torch.Tensor:
    """``[k, k]`` orthonormal DCT-II matrix (rows = frequencies; row 0 is ``1 / sqrt k``)."""
    n = torch.arange(k, dtype=torch.float64)
    D = torch.cos(math.pi * (n[None, :] + 0.5) * n[:, None] / k) * math.sqrt(2.0 / k)
    D[0] = 1 / math.sqrt(k)
    return D


def _real_fourier_basis(H: int, W: int, device=None):
    """Index map of the real orthonormal basis of the unitary 2-D DFT of real ``H x W`` images.

    Returns ``idx`` ``[H W]`` into ``view_as_real(fft2(x)).reshape(2 H W)`` (``2 f + part``, ``f = ky W + kx``,
    part 0 real, 1 imaginary), ``scale`` ``[H W]`` (1 at the self-conjugate frequencies ``f = -f``, where
    only the real part is taken; ``sqrt 2`` for both parts of the smaller-index frequency of each
    conjugate pair), and ``self_conj`` ``[H, W]`` bool.
    """
    ky = torch.arange(H, device=device)[:, None]
    kx = torch.arange(W, device=device)[None, :]
    f = (ky * W + kx).flatten()
    mirror = (((-ky) % H) * W + (-kx) % W).flatten()
    self_conj = f == mirror
    rep = f < mirror
    entries = torch.cat([2 * f[self_conj], 2 * f[rep], 2 * f[rep] + 1])
    scales = torch.cat([torch.ones(int(self_conj.sum()), dtype=torch.float64, device=device),
                        torch.full((2 * int(rep.sum()),), math.sqrt(2.0), dtype=torch.float64, device=device)])
    order = torch.argsort(entries)
    return entries[order], scales[order], self_conj.view(H, W)


def _check(name: str, t, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{name}: {what} must be a floating-point torch.Tensor, got {got}")
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != tuple(shape):
        raise ValueError(f"{name}: {what} must be [B, {', '.join(map(str, shape))}], got {tuple(t.shape)}")


def _image_shape(in_shape) -> tuple[int, int, int]:
    if not isinstance(in_shape, Sequence) or isinstance(in_shape, str):
        raise TypeError(f"in_shape must be a sequence (C, H, W) of ints, got {type(in_shape).__name__}")
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), got {tuple(in_shape)}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in in_shape):
        raise TypeError(f"in_shape must hold ints, got {tuple(in_shape)}")
    if min(in_shape) < 1:
        raise ValueError(f"in_shape must be positive, got {tuple(in_shape)}")
    return tuple(in_shape)


def _positive_int(v, what: str, where: str, zero: bool = False) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{where}: {what} must be an int, got {type(v).__name__}")
    if v < (0 if zero else 1):
        raise ValueError(f"{where}: {what} must be {'>= 0' if zero else 'positive'}, got {v}")
    return v


def _positive_float(v, what: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{where}: {what} must be a number, got {type(v).__name__}")
    v = float(v)
    if not (0 < v < float("inf")):
        raise ValueError(f"{where}: {what} must be a positive finite number, got {v}")
    return v


def _largest_odd(n: int) -> int:
    return n if n % 2 else n - 1
