"""Classical (non-learned) reconstructions for each task: the baselines the diffusion solvers are measured against.

- super-resolution (``sr2``, ``sr4``, ``sr4_bicubic``): :func:`bicubic_upsample`;
- inpainting: :func:`harmonic_fill`, the discrete Laplace equation solved on the missing pixels;
- deblurring: :func:`wiener_deconvolve`, with a ``1 / f^2`` image power spectrum;
- colorization: :func:`grey_replicate`;
- phase retrieval: :func:`hio`, Fienup's hybrid input-output with random restarts.

:func:`baseline` picks one by the operator's name. Every function takes and returns ``[B, C, H, W]``
tensors in [0, 1] units (float32 or float64, any device, ``B >= 0``) and clamps its output to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pyengine.inverse.base import Problem
from pyengine.inverse.operators import (
    AvgPoolSR,
    BicubicSR,
    CircularBlur,
    Colorize,
    Inpaint,
    PhaseRetrieval,
    kernel_transfer,
)

#: Noise floor of :func:`wiener_deconvolve`: the standard deviation of 8-bit quantisation, 1 / (255 sqrt 12).
QUANTISATION_STD = 1.0 / (255.0 * math.sqrt(12.0))


def baseline(problem: Problem, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """The classical reconstruction ``[B, C, H, W]`` in [0, 1] of a problem in [0, 1] units (not ``prior_space()``).

    By ``problem.operator.name``: ``sr*`` bicubic upsampling, ``inpaint_*`` harmonic fill, ``deblur_*``
    Wiener deconvolution (with ``problem.sigma_y``), ``colorize`` grey replicated, ``phase`` HIO
    (``generator`` draws its random starts).

    Example:
        >>> op = make_operator("sr4", (3, 64, 64))
        >>> x_hat = baseline(Problem(op, op(x), 0.0))
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"baseline: problem must be a pyengine.inverse Problem, got {type(problem).__name__}")
    op, y = problem.operator, problem.y
    name = op.name
    kinds = {"sr2": AvgPoolSR, "sr4": AvgPoolSR, "sr4_bicubic": BicubicSR, "inpaint_box": Inpaint,
             "inpaint_random": Inpaint, "deblur_gauss": CircularBlur, "deblur_motion": CircularBlur,
             "colorize": Colorize, "phase": PhaseRetrieval}
    if name not in kinds:
        raise ValueError(f"baseline: no baseline for operator {name!r}; known: {', '.join(kinds)}")
    if not isinstance(op, kinds[name]):
        raise TypeError(f"baseline: operator {name!r} must be a {kinds[name].__name__} from make_operator "
                        f"(a problem in [0, 1] units, not prior_space()), got {type(op).__name__}")
    _check_batch(y, "problem.y", op.out_shape)
    if isinstance(op, (AvgPoolSR, BicubicSR)):
        return bicubic_upsample(y, op.factor)
    if isinstance(op, Inpaint):
        return harmonic_fill(y, op.const("mask", y))
    if isinstance(op, CircularBlur):
        return wiener_deconvolve(y, op.kernel, problem.sigma_y)
    if isinstance(op, Colorize):
        return grey_replicate(y)
    return hio(y, op.in_shape[1:], generator=generator)


def bicubic_upsample(y: torch.Tensor, factor: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, factor H, factor W]``: ``F.interpolate(mode="bicubic", align_corners=False)``
    (Keys cubic, ``a = -0.75``, edge pixels replicated), clamped to [0, 1]."""
    _check_batch(y, "y")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"bicubic_upsample: factor must be a positive int, got {factor!r}")
    return F.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1)


def grey_replicate(y: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W] -> [B, 3, H, W]``: the grey image in every channel (the colorization pseudo-inverse)."""
    _check_batch(y, "y")
    if y.shape[1] != 1:
        raise ValueError(f"grey_replicate: y must have 1 channel, got {tuple(y.shape)}")
    return y.expand(-1, 3, -1, -1).clamp(0, 1)


def harmonic_fill(y: torch.Tensor, mask: torch.Tensor, *, tol: float | None = None,
                  max_iter: int | None = None) -> torch.Tensor:
    """Fill the missing pixels with the discrete harmonic interpolant of the known ones.

    Solves ``L u = 0`` on the missing pixels, ``u = y`` on the known ones, with ``L`` the 4-neighbour graph
    Laplacian of the pixel grid (``L u = deg u - sum of in-image neighbours``: a Neumann image border),
    per image and channel, by Jacobi-preconditioned conjugate gradients on the missing pixels (the
    system is symmetric positive definite wherever a channel has a known pixel) until
    ``||residual|| <= tol ||rhs||``. Channels with no known pixel are filled with 0.5.

    Args:
        y: ``[B, C, H, W]`` measurement (the values at missing pixels are ignored).
        mask: 1 = known, 0 = missing; broadcastable to ``y`` (``[H, W]``, ``[C, H, W]``, ``[B, C, H, W]``).
        tol: relative residual; default 1e-5 (float32) or 1e-10 (float64).
        max_iter: CG iterations at most; default ``10 (H + W) + 100``.

    Returns:
        ``[B, C, H, W]`` in [0, 1], equal to ``y`` on the known pixels.
    """
    _check_batch(y, "y")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"harmonic_fill: mask must be a torch.Tensor, got {type(mask).__name__}")
    try:
        known = torch.broadcast_to(mask.to(y.dtype), y.shape) != 0
    except RuntimeError as e:
        raise ValueError(f"harmonic_fill: mask of shape {tuple(mask.shape)} does not broadcast to y "
                         f"{tuple(y.shape)}") from e
    B, C, H, W = y.shape
    if y.numel() == 0:
        return y.clone()
    tol = (1e-10 if y.dtype == torch.float64 else 1e-5) if tol is None else float(tol)
    max_iter = 10 * (H + W) + 100 if max_iter is None else int(max_iter)
    k = known.to(y.dtype)
    free = 1 - k
    y_known = torch.where(known, y, torch.zeros_like(y))

    def neighbours(u, mode):
        p = F.pad(u, (1, 1, 1, 1), mode=mode)
        return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]

    def laplacian(u):
        return 4 * u - neighbours(u, "replicate")  # a replicated neighbour cancels: the Neumann border

    def dot(a, b):
        return (a * b).sum((-2, -1), keepdim=True)

    degree = neighbours(torch.ones(1, 1, H, W, dtype=y.dtype, device=y.device), "constant")  # in-image neighbours
    count = k.sum((-2, -1), keepdim=True)
    mean = y_known.sum((-2, -1), keepdim=True) / count.clamp_min(1)
    z = free * mean                                        # unknowns; start from the mean of the known pixels
    b = -laplacian(y_known) * free
    r = b - laplacian(z) * free
    b_norm = dot(b, b).sqrt()
    s = r * free / degree
    p = s
    rs = dot(r, s)
    for it in range(max_iter):
        Ap = laplacian(p) * free
        pAp = dot(p, Ap)
        alpha = torch.where(pAp > 0, rs / torch.where(pAp > 0, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        z = z + alpha * p
        r = r - alpha * Ap
        if it % 10 == 9 and bool((dot(r, r).sqrt() <= tol * b_norm).all()):
            break
        s = r * free / degree
        rs_new = dot(r, s)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = s + beta * p
        rs = rs_new
    z = torch.where(count > 0, z, torch.full_like(z, 0.5))
    return torch.where(known, y_known, z).clamp(0, 1)


def wiener_deconvolve(y: torch.Tensor, kernel: torch.Tensor, sigma_y: float, *, image_std: float = 0.25
                      ) -> torch.Tensor:
    """Wiener deconvolution of a circular blur ``y = kernel * x + sigma_y n``, per channel, by FFT.

    ``X = conj(K) Y / (|K|^2 + s^2 / P)`` in the unitary DFT, where ``s = max(sigma_y, QUANTISATION_STD)`` is
    the white noise per coefficient and ``P`` the image prior's power spectrum: ``P(f) ~ 1 / |f|^2``
    (``f`` in cycles per pixel; the natural-image power law), scaled so that an image's pixel variance
    is ``image_std^2`` (``sum_{f != 0} P(f) = H W image_std^2``), and unbounded at ``f = 0`` (the mean is
    not regularised: ``X(0) = Y(0) / K(0)``).

    Args:
        y: ``[B, C, H, W]`` blurred image.
        kernel: ``[kh, kw]`` the point-spread function, centred as in :class:`~.operators.CircularBlur`.
        sigma_y: the noise level in [0, 1] units.
        image_std: the prior's pixel standard deviation (0.25: a typical natural image in [0, 1]).

    Returns:
        ``[B, C, H, W]`` in [0, 1].
    """
    _check_batch(y, "y")
    if not isinstance(kernel, torch.Tensor) or kernel.dim() != 2:
        raise TypeError("wiener_deconvolve: kernel must be a 2-D torch.Tensor [kh, kw]")
    sigma_y = float(sigma_y)
    if not sigma_y >= 0:
        raise ValueError(f"wiener_deconvolve: sigma_y must be >= 0, got {sigma_y}")
    if not image_std > 0:
        raise ValueError(f"wiener_deconvolve: image_std must be > 0, got {image_std}")
    B, C, H, W = y.shape
    if y.numel() == 0:
        return y.clone()
    K = kernel_transfer(kernel.to(y.device), H, W)[:, :W // 2 + 1]
    f64 = dict(dtype=torch.float64, device=y.device)
    f2 = torch.fft.fftfreq(H, **f64)[:, None] ** 2 + torch.fft.rfftfreq(W, **f64)[None, :] ** 2
    inv_f2 = torch.where(f2 > 0, 1 / torch.where(f2 > 0, f2, torch.ones_like(f2)), torch.zeros_like(f2))
    weight = torch.full_like(inv_f2, 2.0)                  # the half spectrum: each column stands for two
    weight[:, 0] = 1
    if W % 2 == 0:
        weight[:, -1] = 1
    power = inv_f2 * (H * W * image_std ** 2 / (weight * inv_f2).sum())
    noise = max(sigma_y, QUANTISATION_STD) ** 2
    # |K|^2 + noise / P, written as (|K|^2 P + noise) / P so that P = inf (f = 0) needs no special case
    G = K.conj() * power / (K.abs() ** 2 * power + noise)
    G[0, 0] = 1 / K[0, 0] if K[0, 0].abs() > 0 else 0
    X = torch.fft.rfft2(y, norm="ortho") * G.to(torch.complex128 if y.dtype == torch.float64 else torch.complex64)
    return torch.fft.irfft2(X, s=(H, W), norm="ortho").clamp(0, 1)


def hio(magnitudes: torch.Tensor, size: Sequence[int], *, iterations: int = 400, er_iterations: int = 50,
        beta: float = 0.9, restarts: int = 4, warmup: int | None = None,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Fienup's hybrid input-output phase retrieval for :class:`~.operators.PhaseRetrieval` measurements.

    The object-domain constraint set is ``{x: x = 0 off the support, 0 <= x <= 1 on it}``, the support
    being the un-padded ``H x W`` region at the centre. Each iteration replaces the Fourier modulus of
    ``g`` by the measured one (keeping the phase) to get ``g'``, then sets ``g = g'`` where ``g'`` meets the
    constraints and ``g = g - beta (g' - P(g'))`` where it does not (``P`` the projection on the set; off
    the support and for ``g' < 0`` this is Fienup's ``g - beta g'``). ``iterations`` HIO steps are
    followed by ``er_iterations`` error-reduction steps (``g = P(g')``). The first ``warmup`` HIO steps
    (default ``iterations // 4``) use the support without its bottom-right quadrant: breaking the box's
    centro-symmetry for a while gets HIO out of twin-image stagnation (Fienup and Wackerman, JOSA A
    3(11), 1986), which is otherwise common. Each image channel is solved
    from ``restarts`` uniform random starts and the one with the lowest magnitude residual
    ``|| |F g| - y ||`` is kept. The solution is determined up to a 180-degree rotation in the support
    (the twin image); channels 1.. are rotated where that correlates them better with channel 0.

    Args:
        magnitudes: ``[B, C, H', W']``, as ``PhaseRetrieval.forward`` returns (centred, unitary DFT).
        size: ``(H, W)`` of the image, centred in ``H' x W'`` (``H' - H`` and ``W' - W`` even).
        iterations, er_iterations, beta, restarts, warmup: as above (Fienup's ``beta = 0.9``).
        generator: draws the random starts (``None``: seed 0 on the magnitudes' device).

    Returns:
        ``[B, C, H, W]`` in [0, 1].
    """
    _check_batch(magnitudes, "magnitudes")
    if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise TypeError(f"hio: size must be a pair of ints (H, W), got {size!r}")
    B, C, Hp, Wp = magnitudes.shape
    H, W = size
    if not (0 < H <= Hp and 0 < W <= Wp and (Hp - H) % 2 == 0 and (Wp - W) % 2 == 0):
        raise ValueError(f"hio: size {(H, W)} must fit centred in the magnitudes' {(Hp, Wp)}")
    warmup = iterations // 4 if warmup is None else warmup
    if not (restarts >= 1 and iterations >= 0 and er_iterations >= 0 and 0 < beta <= 1 and warmup >= 0):
        raise ValueError(f"hio: need restarts >= 1, iterations >= 0, er_iterations >= 0, 0 < beta <= 1, warmup >= 0; "
                         f"got {restarts}, {iterations}, {er_iterations}, {beta}, {warmup}")
    if magnitudes.numel() == 0:
        return magnitudes.new_zeros(B, C, H, W)
    ph, pw = (Hp - H) // 2, (Wp - W) // 2
    mag = torch.fft.ifftshift(magnitudes, dim=(-2, -1))
    support = torch.zeros(Hp, Wp, dtype=torch.bool, device=mag.device)
    support[ph:ph + H, pw:pw + W] = True
    lopsided = support.clone()
    lopsided[ph + H // 2:ph + H, pw + W // 2:pw + W] = False
    if generator is None:
        generator = torch.Generator(device=mag.device).manual_seed(0)
    g = torch.rand((restarts, B, C, Hp, Wp), generator=generator, dtype=mag.dtype, device=generator.device)
    g = g.to(mag.device) * support

    def project(v, mask):
        return torch.where(mask, v.clamp(0, 1), torch.zeros_like(v))

    half = mag[..., :Wp // 2 + 1]                          # g is real: the rfft half spectrum suffices

    def modulus(v):
        V = torch.fft.rfft2(v, norm="ortho")
        a = V.abs()
        V = torch.where(a > 0, V * (half / torch.where(a > 0, a, torch.ones_like(a))), half.to(V.dtype))
        return torch.fft.irfft2(V, s=(Hp, Wp), norm="ortho")

    for it in range(iterations + er_iterations):
        gp = modulus(g)
        pg = project(gp, lopsided if it < warmup else support)
        g = torch.where(gp == pg, gp, g - beta * (gp - pg)) if it < iterations else pg
    residual = (torch.fft.fft2(g, norm="ortho").abs() - mag).square().sum((-2, -1))   # [R, B, C]
    best = residual.argmin(0)
    x = torch.gather(g, 0, best[None, :, :, None, None].expand(1, B, C, Hp, Wp))[0, ..., ph:ph + H, pw:pw + W]
    # resolve the twin-image ambiguity between channels: rotate each to match channel 0
    rot = x.flip(-2, -1)
    ref = x[:, :1] - x[:, :1].mean((-2, -1), keepdim=True)
    keep = ((x - x.mean((-2, -1), keepdim=True)) * ref).sum((-2, -1), keepdim=True)
    turn = ((rot - rot.mean((-2, -1), keepdim=True)) * ref).sum((-2, -1), keepdim=True)
    return torch.where(turn > keep, rot, x).clamp(0, 1)


def _check_batch(t, what: str, shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{what} must be a floating-point torch.Tensor, got {got}")
    if t.dim() != 4 or (shape is not None and tuple(t.shape[1:]) != tuple(shape)):
        want = f"[B, {', '.join(map(str, shape))}]" if shape is not None else "[B, C, H, W]"
        raise ValueError(f"{what} must be {want}, got {tuple(t.shape)}")
