"""Posterior solvers for inverse problems on a pixel diffusion prior.

Eight methods, one function each, and :func:`solve` to pick one by name (:data:`METHODS`):

=========  ==========================================================  ====================  ======
method     what it does with the measurement                            operator              steps
=========  ==========================================================  ====================  ======
scoresde   predictor-corrector sampling + replacement of the measured   linear                1000
           component (Song et al. 2021, score_sde)
ilvr       DDPM + low-pass replacement ``x - A^+A x + A^+ y_t`` (ILVR)  linear                100
snips      annealed Langevin in the spectral domain (Kawar et al. 2021) spectral view         500
ddrm       DDRM's spectral-domain variational sampler (Kawar 2022)      spectral view         20
dps        DDPM + ``zeta grad ||y - A(x0_hat)||`` (Chung et al. 2023)   any (differentiable)  1000
pigdm      DDIM + pseudoinverse guidance, noisy form (Song 2023)        spectral view         100
mcg        DDPM + manifold-constrained gradient + replacement (2022)    linear                1000
reddiff    RED-diff: Adam on ``mu`` with the denoiser as regulariser    any (differentiable)  1000
=========  ==========================================================  ====================  ======

Conventions shared by every method:

- **Units.** ``problem`` is in [0, 1] image units; the solvers work on ``problem.prior_space()``
  (``y' = 2 y - A(1)``, ``sigma' = 2 sigma_y``: the only conversion) and return
  ``prior.decode(x)``. Below, ``y`` and ``sigma_y`` mean the prior-space ones and ``abar_t`` the
  prior's ``alphas_cumprod``; ``abar_{-1} = 1`` (clean).
- **Batch.** ``B = problem.y.shape[0]``: one sample per measurement row (pass ``y.expand(B, ...)``
  for B samples of one measurement). Samples never interact: every norm, step size and optimiser
  state is per sample, so a sample does not depend on the others in its batch.
- **Time grid.** ``steps`` steps at ``t_i = floor(i T / steps)``, ``i = steps-1 .. 0`` (DDIM's and
  DDRM's "uniform" skip; all ``T`` steps when ``steps = T``); a step from ``t`` to the next lower
  grid point ``s`` (``-1`` after ``t = 0``) uses the respaced coefficients ``abar_t / abar_s``.
- **CCDF** (Chung et al. 2022, "Come-closer-diffuse-faster"): ``t0 < 1`` keeps the lowest
  ``round(t0 steps)`` grid points and starts at the first, ``t ~ t0 T``, from the forward-diffused
  initialisation ``sqrt(abar_t) x_init + sqrt(1 - abar_t) z`` with ``x_init = A^+ y`` (linear
  operators) or 0, mid-grey (nonlinear ones); ``t0 = 1`` is the full run from each method's own
  start (noise, or DDRM's measurement-informed ``x_T``). RED-diff keeps its initialisation and runs
  the lower part of its schedule.
- **Replacement** (scoresde, ilvr, mcg): ``x <- x - A^+(A x - y_t)`` with the measurement diffused
  to the level ``x`` is at, ``y_t = sqrt(abar_t) y + sqrt(1 - abar_t) A z`` (``z ~ N(0, I)`` fresh
  each time, so that ``A^+ y_t`` is the forward diffusion of ``A^+ y`` in the measured subspace);
  the noise already in a noisy ``y`` is carried along, not modelled (as in score_sde, ILVR and MCG),
  and after the last step ``y_{-1} = y``: the output's measured component is exactly ``A^+ y``.
- **Cost.** The prior is wrapped in a counter: ``SolverResult.calls`` counts batched denoiser
  evaluations, ``backward`` the backward passes through the denoiser, ``denoiser_seconds`` the time
  spent in both (synchronised on CUDA).
- **Randomness** comes from ``generator`` only (drawn on its device, then moved): the same
  generator state gives the same samples.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time

import torch

from pyengine.diffusion.prior import Prior
from pyengine.inverse.base import Operator, Problem, SpectralView, require_linear, require_spectral

METHODS = ("scoresde", "ilvr", "snips", "ddrm", "dps", "pigdm", "mcg", "reddiff")

# what each method needs of the operator: "spectral" (a spectral view), "linear" or "any"
NEEDS = {"scoresde": "linear", "ilvr": "linear", "snips": "spectral", "ddrm": "spectral", "dps": "any",
         "pigdm": "spectral", "mcg": "linear", "reddiff": "any"}


def supports(method: str, op: Operator) -> bool:
    """Whether ``method`` takes the operator ``op`` (:data:`NEEDS`); :func:`solve` refuses it otherwise."""
    need = NEEDS[method]
    return need == "any" or (op.linear and (need == "linear" or op.spectral is not None))


DEFAULT_STEPS = {"scoresde": 1000, "ilvr": 100, "snips": 500, "ddrm": 20, "dps": 1000, "pigdm": 100,
                 "mcg": 1000, "reddiff": 1000}

# DPS's step size zeta per task, from the official repository's configs (scale of the "ps" method):
# super-resolution, Gaussian and motion deblurring 0.3, inpainting 0.5, phase retrieval 1.0.
DPS_ZETA = {"sr2": 0.3, "sr4": 0.3, "sr4_bicubic": 0.3, "deblur_gauss": 0.3, "deblur_motion": 0.3,
            "inpaint_box": 0.5, "inpaint_random": 0.5, "phase": 1.0}
DPS_ZETA_DEFAULT = 1.0  # the repository's default scale, for operators without a config (colorize, user ones)

# MCG's weight alpha of the manifold-constrained gradient, from the official repository: 1.0 for
# inpainting (guided-diffusion sampler) and CT, 0.1 for colorization.
MCG_ALPHA = {"colorize": 0.1}
MCG_ALPHA_DEFAULT = 1.0

REDDIFF_WEIGHTINGS = ("linear", "sqrt", "square", "log", "trunc_linear", "power2over3", "const")

_TINY = 1e-30


@dataclasses.dataclass
class SolverResult:
    """What a solver returns.

    Attributes:
        x: ``[B, C, H, W]`` samples in [0, 1] units (``prior.decode``: clamped or not as the prior does).
        calls: denoiser evaluations (one batched evaluation of the whole batch counts 1).
        backward: backward passes through the denoiser.
        seconds: wall time of the solve.
        denoiser_seconds: of which inside the denoiser (forward and backward).
        method: the method's name.
        options: the resolved options (steps, t0, eta, zeta, ...).
    """

    x: torch.Tensor
    calls: int
    backward: int
    seconds: float
    denoiser_seconds: float
    method: str
    options: dict


# -- the counting wrapper around the prior ------------------------------------------------------------------

def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


class _BackwardStart(torch.autograd.Function):
    """Identity on the denoiser's output: its backward runs first in a backward pass through the denoiser."""

    @staticmethod
    def forward(ctx, eps, counter):
        ctx.counter = counter
        return eps.view_as(eps)

    @staticmethod
    def backward(ctx, grad):
        _sync(grad)
        ctx.counter.backward += 1
        ctx.counter._backward_start = time.perf_counter()
        return grad, None


class _BackwardEnd(torch.autograd.Function):
    """Identity on the denoiser's input: its backward runs once the denoiser's backward is done."""

    @staticmethod
    def forward(ctx, x, counter):
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _sync(grad)
        c = ctx.counter
        if c._backward_start is not None:
            c.seconds += time.perf_counter() - c._backward_start
            c._backward_start = None
        return grad, None


class _Denoiser:
    """``prior.predict_noise`` at integer steps for a fixed text embedding, counting calls, backward
    passes and the time spent in both."""

    def __init__(self, prior: Prior, text_embedding: torch.Tensor):
        self.prior, self.text = prior, text_embedding
        self.calls, self.backward, self.seconds = 0, 0, 0.0
        self._backward_start = None

    def __call__(self, x: torch.Tensor, t: int, grad: bool = False) -> torch.Tensor:
        """Epsilon ``[B, C, H, W]`` at ``x`` and step ``t``; differentiable in ``x`` when ``grad``."""
        _sync(x)
        start = time.perf_counter()
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        if grad:
            with torch.enable_grad():
                eps = self.prior.predict_noise(_BackwardEnd.apply(x, self), tt, self.text)
                eps = _BackwardStart.apply(eps, self)
        else:
            with torch.no_grad():
                eps = self.prior.predict_noise(x, tt, self.text)
        _sync(eps)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return eps


# -- argument checks ----------------------------------------------------------------------------------------

def _number(method: str, name: str, value, lo: float, hi: float = math.inf, lo_open: bool = False,
            hi_open: bool = False) -> float:
    """``value`` as a float in the interval, else ValueError naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open or hi == math.inf else ']'}"
        raise ValueError(f"{method}: {name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def _integer(method: str, name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"{lo} <= {name}" + (f" <= {hi}" if hi is not None else "")
        raise ValueError(f"{method}: {name} must be an integer with {bound}, got {value!r}")
    return int(value)


# -- one solve's state: the problem in prior space, the grid, the noise, the counter --------------------------

class _Run:
    """Everything a method needs: the prior-space problem, the time grid, noise and the counted denoiser.

    ``need``: ``"spectral"``, ``"linear"`` or ``"any"`` (what the method requires of the operator).
    """

    def __init__(self, method: str, prior, problem, steps, t0, generator, text, need: str, init=None):
        self.start_time = time.perf_counter()
        self.method = method
        if not isinstance(prior, Prior):
            raise TypeError(f"{method}: prior must be a pyengine.diffusion.prior.Prior, got {type(prior).__name__}")
        if prior.latent:
            raise ValueError(f"{method}: the prior {prior.name!r} is a latent prior; the inverse-problem solvers "
                             "need a pixel prior (latent = False) whose images are 2x - 1 of the [0, 1] images")
        if not isinstance(problem, Problem):
            raise TypeError(f"{method}: problem must be a pyengine.inverse Problem, got {type(problem).__name__}")
        op = problem.operator
        self.view: SpectralView | None = None
        if need == "spectral":
            self.view = require_spectral(op, method)
        elif need == "linear":
            require_linear(op, method)
        C, H, W = op.in_shape
        denoised = getattr(prior, "image_shape", (prior.channels, prior.resolution, prior.resolution))
        if (C, H, W) != tuple(denoised):
            raise ValueError(f"{method}: the operator takes {C}x{H}x{W} images but the prior {prior.name!r} "
                             f"denoises {'x'.join(map(str, denoised))} images")
        T = prior.schedule.T
        steps = DEFAULT_STEPS[method] if steps is None else steps
        self.steps = _integer(method, "steps", steps, 1, T)
        self.t0 = _number(method, "t0", t0, 0.0, 1.0, lo_open=True)
        n0 = round(self.t0 * self.steps)
        if n0 < 1:
            raise ValueError(f"{method}: t0 = {t0} keeps no step of the {self.steps}-step grid (t0 * steps rounds "
                             f"to 0); use t0 >= {0.5 / self.steps:.3g} or more steps")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{method}: generator must be a torch.Generator or None, got {type(generator).__name__}")
        if not isinstance(text, str):
            raise TypeError(f"{method}: text must be a string (the prompt; '' for unconditional), got "
                            f"{type(text).__name__}")
        self.full = n0 == self.steps
        # the grid t_i = floor(i T / steps), descending, truncated to its lowest n0 points for CCDF
        grid = [(i * T) // self.steps for i in range(self.steps)]
        self.seq = grid[:n0][::-1]
        self.next = {t: (grid[i - 1] if i > 0 else -1) for i, t in enumerate(grid)}
        self.abar_table = prior.schedule.alphas_cumprod

        ps = problem.prior_space()
        self.op: Operator = ps.operator
        self.y, self.sigma = ps.y, float(ps.sigma_y)
        self.B = self.y.shape[0]
        self.shape = (self.B, C, H, W)
        self.device, self.dtype = self.y.device, self.y.dtype
        self.generator = generator
        with torch.no_grad():
            emb = prior.encode_text([text])
        self.denoiser = _Denoiser(prior, emb)
        self.prior = prior
        self.init = None
        if init is not None:
            if not isinstance(init, torch.Tensor) or not init.is_floating_point():
                raise TypeError(f"{method}: init must be a floating-point [B or 1, {C}, {H}, {W}] image tensor")
            if init.dim() != 4 or tuple(init.shape[1:]) != (C, H, W) or init.shape[0] not in (1, self.B):
                raise ValueError(f"{method}: init must be [B or 1, {C}, {H}, {W}] with B = {self.B}, got "
                                 f"{tuple(init.shape)}")
            self.init = (2 * init.to(self.device, self.dtype) - 1).expand(self.shape)  # [0, 1] -> prior space

    # -- schedule ---------------------------------------------------------------------------------------
    def abar(self, t: int) -> float:
        """``abar_t`` as a Python float (float64), 1 for ``t = -1``."""
        return 1.0 if t < 0 else float(self.abar_table[t])

    def pairs(self) -> list[tuple[int, int]]:
        """``(t, s)`` of every step: from grid point ``t`` to the next lower one ``s`` (-1: clean)."""
        return [(t, self.next[t]) for t in self.seq]

    # -- noise and denoiser -----------------------------------------------------------------------------
    def randn(self, shape=None) -> torch.Tensor:
        shape = self.shape if shape is None else tuple(shape)
        dev = self.generator.device if self.generator is not None else self.device
        z = torch.randn(shape, generator=self.generator, device=dev, dtype=self.dtype)
        return z.to(self.device)

    def eps(self, x: torch.Tensor, t: int, grad: bool = False) -> torch.Tensor:
        return self.denoiser(x, t, grad)

    def x0(self, x: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """Tweedie's ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        a = self.abar(t)
        return (x - math.sqrt(1 - a) * eps) / math.sqrt(a)

    # -- measurement ------------------------------------------------------------------------------------
    def init_image(self) -> torch.Tensor:
        """CCDF's initialisation in prior space: ``init`` when given, else ``A^+ y`` (linear) or 0 (nonlinear)."""
        if self.init is not None:
            return self.init.clone()
        if self.op.linear:
            return self.op.pinv(self.y).to(self.dtype).expand(self.shape).clone()
        return torch.zeros(self.shape, device=self.device, dtype=self.dtype)

    def start(self) -> torch.Tensor:
        """``x`` at the first grid point: ``N(0, I)`` for a full run, else the forward-diffused init."""
        if self.full:
            return self.randn()
        a = self.abar(self.seq[0])
        return math.sqrt(a) * self.init_image() + math.sqrt(1 - a) * self.randn()

    def replace(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """``x - A^+(A x - y_t)``, ``y_t = sqrt(abar_t) y + sqrt(1 - abar_t) A z`` (``y`` itself at ``t = -1``)."""
        a = self.abar(t)
        y_t = self.y if a >= 1.0 else math.sqrt(a) * self.y + math.sqrt(1 - a) * self.op.forward(self.randn())
        return x - self.op.pinv(self.op.forward(x) - y_t)

    # -- the common steps -------------------------------------------------------------------------------
    def ddpm(self, x: torch.Tensor, x0: torch.Tensor, t: int, s: int) -> torch.Tensor:
        """Ancestral step ``x_s ~ q(x_s | x_t, x0)`` of the respaced chain (``alpha = abar_t / abar_s``):
        mean ``sqrt(abar_s) (1 - alpha) / (1 - abar_t) x0 + sqrt(alpha) (1 - abar_s) / (1 - abar_t) x_t``,
        variance ``(1 - alpha) (1 - abar_s) / (1 - abar_t)`` (0 at ``s = -1``: ``x0`` itself)."""
        a_t, a_s = self.abar(t), self.abar(s)
        alpha = a_t / a_s
        mean = (math.sqrt(a_s) * (1 - alpha) / (1 - a_t)) * x0 + (math.sqrt(alpha) * (1 - a_s) / (1 - a_t)) * x
        var = (1 - alpha) * (1 - a_s) / (1 - a_t)
        return mean + math.sqrt(var) * self.randn() if var > 0 else mean

    def ddim(self, x0: torch.Tensor, eps: torch.Tensor, t: int, s: int, eta: float) -> torch.Tensor:
        """DDIM step ``sqrt(abar_s) x0 + c1 z + c2 eps``, ``c1 = eta sqrt((1 - abar_t / abar_s)(1 - abar_s)
        / (1 - abar_t))``, ``c2 = sqrt(1 - abar_s - c1^2)`` (eta = 1: the ancestral step)."""
        a_t, a_s = self.abar(t), self.abar(s)
        c1 = eta * math.sqrt(max((1 - a_t / a_s) * (1 - a_s) / (1 - a_t), 0.0))
        c2 = math.sqrt(max(1 - a_s - c1 * c1, 0.0))
        out = math.sqrt(a_s) * x0 + c2 * eps
        return out + c1 * self.randn() if c1 > 0 else out

    def result(self, x: torch.Tensor, **options) -> SolverResult:
        with torch.no_grad():
            img = self.prior.decode(x.detach())
        _sync(img)
        opts = {"steps": self.steps, "t0": self.t0, **options}
        d = self.denoiser
        return SolverResult(img, d.calls, d.backward, time.perf_counter() - self.start_time, d.seconds,
                            self.method, opts)


def _norms(v: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean norms ``[B]`` of ``v`` ``[B, ...]``."""
    return v.reshape(v.shape[0], -1).norm(dim=1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` -> ``[B, 1, ..., 1]`` broadcasting against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


# -- the methods --------------------------------------------------------------------------------------------

def scoresde(prior: Prior, problem: Problem, *, steps: int | None = None, t0: float = 1.0,
             generator: torch.Generator | None = None, text: str = "", init: torch.Tensor | None = None,
             snr: float = 0.16,
             corrector_steps: int = 1) -> SolverResult:
    """Score-SDE's predictor-corrector sampler with replacement (Song et al. 2021, ``score_sde_pytorch``'s
    ``controllable_generation``: its inpainter and colorizer, generalised to ``A^+``).

    At every grid step ``t -> s`` (VP-SDE, score ``grad log p_t(x) = -eps(x, t) / sqrt(1 - abar_t)``,
    ``alpha = abar_t / abar_s``, ``beta = 1 - alpha``):

    1. ``corrector_steps`` Langevin corrector steps at ``t``: ``x <- x + e grad + sqrt(2 e) z`` with
       ``e = 2 alpha (snr ||z|| / ||grad||)^2`` (norms per sample; score_sde averages them over the
       batch), each followed by the replacement at level ``t``;
    2. the reverse-diffusion predictor ``x <- (2 - sqrt(1 - beta)) x + beta grad + sqrt(beta) z``
       (no noise on the last step: score_sde's ``noise_removal``), followed by the replacement at
       level ``s`` (score_sde replaces at ``t``, the level before the predictor step).

    Replacement: ``x <- x - A^+(A x - y_t)`` (module docstring). Defaults: 1000 steps, ``snr = 0.16``
    (score_sde's default sampling config), one corrector step: ``steps (1 + corrector_steps)``
    denoiser calls, no backward pass.
    """
    run = _Run("scoresde", prior, problem, steps, t0, generator, text, need=NEEDS["scoresde"], init=init)
    snr = _number("scoresde", "snr", snr, 0.0, lo_open=True)
    corrector_steps = _integer("scoresde", "corrector_steps", corrector_steps, 0)
    with torch.no_grad():
        x = run.start()
        for t, s in run.pairs():
            a_t, a_s = run.abar(t), run.abar(s)
            alpha, sq = a_t / a_s, math.sqrt(1 - a_t)
            for _ in range(corrector_steps):
                grad = -run.eps(x, t) / sq
                z = run.randn()
                e = 2 * alpha * (snr * _norms(z) / _norms(grad).clamp_min(_TINY)) ** 2
                x = x + _per_sample(e, x) * grad + _per_sample((2 * e).sqrt(), x) * z
                x = run.replace(x, t)
            grad = -run.eps(x, t) / sq
            beta = 1 - alpha
            x = (2 - math.sqrt(alpha)) * x + beta * grad
            if s >= 0:
                x = x + math.sqrt(beta) * run.randn()
            x = run.replace(x, s)
    return run.result(x, snr=snr, corrector_steps=corrector_steps)


def ilvr(prior: Prior, problem: Problem, *, steps: int | None = None, t0: float = 1.0,
         generator: torch.Generator | None = None, text: str = "", init: torch.Tensor | None = None,
         range_t: int = 0) -> SolverResult:
    """ILVR: iterative latent variable refinement (Choi et al. 2021, ``ilvr_adm``).

    DDPM ancestral steps ``x'_s ~ p(x_s | x_t)`` (``x0_hat`` from the denoiser) followed by the
    low-pass replacement ``x_s = x'_s - phi(x'_s) + phi(y_s)`` with ``phi = A^+ A``, the general form
    of ILVR's ``phi_N`` (up(down(.))) for any linear ``A``: ``x_s = x'_s - A^+ A x'_s + A^+ y_s``
    with ``y_s`` the measurement diffused to level ``s`` (module docstring). The last ``range_t``
    steps skip the replacement (ILVR's ``range_t``, which counts from the last step: ILVR conditions
    while ``i > range_t`` and replaces at the pre-step level ``t``).

    Defaults: 100 steps (the ILVR README's ``timestep_respacing 100``), ``range_t = 0``: ``steps``
    denoiser calls, no backward pass.
    """
    run = _Run("ilvr", prior, problem, steps, t0, generator, text, need=NEEDS["ilvr"], init=init)
    range_t = _integer("ilvr", "range_t", range_t, 0, run.steps)
    with torch.no_grad():
        x = run.start()
        pairs = run.pairs()
        for i, (t, s) in enumerate(pairs):
            x = run.ddpm(x, run.x0(x, run.eps(x, t), t), t, s)
            if i < len(pairs) - range_t:
                x = run.replace(x, s)
    return run.result(x, range_t=range_t)


def snips(prior: Prior, problem: Problem, *, steps: int | None = None, t0: float = 1.0,
          generator: torch.Generator | None = None, text: str = "", init: torch.Tensor | None = None,
          steps_each: int = 5,
          step_lr: float = 3.3e-6) -> SolverResult:
    """SNIPS: annealed Langevin dynamics in the spectral domain (Kawar, Vaksman and Elad 2021,
    ``snips_torch``'s ``general_anneal_Langevin_dynamics``), on a VP prior.

    SNIPS works on the variance-exploding variable ``x~ = x_t / sqrt(abar_t)`` at noise levels
    ``sigma_t = sqrt((1 - abar_t) / abar_t)`` (here the grid points: ``steps`` levels, from
    ``sigma_{T-1}`` ~ 158 to ``sigma_0 = 0.01`` on DDPM's linear schedule, close to SNIPS's 90 .. 0.01),
    with the score ``grad log p(x~) = -eps(sqrt(abar_t) x~, t) / sigma_t``, in the coordinates
    ``c = V^T x~`` where ``A = U diag(s) V^T`` and ``y_u = U^T y``. At each level, ``steps_each``
    Langevin steps ``c <- c + d * g + sqrt(2 d) z`` with, per coordinate (``a = step_lr sigma_t^2 /
    sigma_L^2``, ``sigma_L = sigma_0`` the smallest level):

    - ``s = 0`` (unmeasured): ``g = V^T score``, ``d = a``;
    - ``s sigma_t > sigma_y`` (the measurement is less noisy than ``x~``): ``g = s (y_u - s c) /
      (s^2 sigma_t^2 - sigma_y^2)``, ``d = a (1 - sigma_y^2 / (s^2 sigma_t^2))`` (no prior term);
    - ``s sigma_t < sigma_y``: ``g = s (y_u - s c) / (sigma_y^2 - s^2 sigma_t^2) + V^T score``,
      ``d = a (1 - s^2 sigma_t^2 / sigma_y^2)``.

    The sample is ``x~`` after the last level (SNIPS adds no final denoising step). Defaults: 500
    levels (SNIPS's CelebA run), 5 steps each and ``step_lr = 3.3e-6`` (its CelebA config, for
    ``sigma_L = 0.01``): ``steps * steps_each`` denoiser calls, no backward pass.
    """
    run = _Run("snips", prior, problem, steps, t0, generator, text, need=NEEDS["snips"], init=init)
    steps_each = _integer("snips", "steps_each", steps_each, 1)
    step_lr = _number("snips", "step_lr", step_lr, 0.0, lo_open=True)
    view = run.view
    sv = view.singulars(run.device, run.dtype)
    y_u = view.Ut(run.y).to(run.dtype)
    sigma_y = run.sigma
    sig = lambda t: math.sqrt((1 - run.abar(t)) / run.abar(t))
    sigma_last = sig(0)
    with torch.no_grad():
        if run.full:
            xt = run.randn() / math.sqrt(run.abar(run.seq[0]))
        else:
            xt = run.init_image() + sig(run.seq[0]) * run.randn()
        c = view.Vt(xt)
        measured = sv > 0
        s_safe = torch.where(measured, sv, torch.ones_like(sv))
        for t in run.seq:
            sigma, sq = sig(t), math.sqrt(run.abar(t))
            a = step_lr * (sigma / sigma_last) ** 2
            before = measured & (sv * sigma > sigma_y)
            after = measured & (sv * sigma < sigma_y)
            d = torch.full_like(sv, a)
            d = torch.where(before, a * (1 - (sigma_y / (s_safe * sigma)) ** 2), d)
            d = torch.where(after, a * (1 - (sv * sigma / max(sigma_y, _TINY)) ** 2), d)
            denom = (sv * sigma) ** 2 - sigma_y ** 2
            denom = torch.where(after, -denom, denom)
            denom = torch.where(before | after, denom, torch.ones_like(denom))
            use_prior = ~before & (after | ~measured)
            for _ in range(steps_each):
                score = view.Vt(-run.eps(sq * view.V(c), t) / sigma)
                lik = torch.where(before | after, sv * (y_u - sv * c) / denom, torch.zeros_like(c))
                g = lik + torch.where(use_prior, score, torch.zeros_like(score))
                c = c + d * g + (2 * d).sqrt() * view.Vt(run.randn())
        x = view.V(c)
    return run.result(x, steps_each=steps_each, step_lr=step_lr)


def ddrm(prior: Prior, problem: Problem, *, steps: int | None = None, t0: float = 1.0,
         generator: torch.Generator | None = None, text: str = "", init: torch.Tensor | None = None,
         eta: float = 0.85,
         eta_b: float = 1.0) -> SolverResult:
    """DDRM: denoising diffusion restoration models (Kawar, Elad, Ermon and Song 2022, ``ddrm``'s
    ``efficient_generalized_steps``), noisy form.

    In the spectral coordinates of the variance-exploding variable, ``c = V^T x_t / sqrt(abar_t)``
    at level ``sigma_t = sqrt((1 - abar_t) / abar_t)``, with ``c0 = V^T x0_hat``, ``e = V^T eps``,
    ``y_bar = U^T y / s`` and ``z ~ N(0, I)``, a step ``t -> s`` sets, per coordinate (``sigma' = sigma_s``):

    - ``s_i = 0``: ``c = c0 + sqrt(1 - eta^2) sigma' e + eta sigma' z``;
    - ``s_i sigma' < sigma_y``: ``c = c0 + sqrt(1 - eta^2) sigma' (U^T y - s_i c0) / sigma_y + eta sigma' z``;
    - ``s_i sigma' > sigma_y``: ``c = (1 - eta_b) c0 + eta_b y_bar + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) z``;

    then ``x_s = sqrt(abar_s) V c`` (the last step returns ``x0_hat``). A full run starts from DDRM's
    ``x_T``: ``c = y_bar + sqrt(sigma_T^2 - sigma_y^2 / s^2) z`` where ``s sigma_T > sigma_y``, else
    ``sigma_T z``. Defaults: ``eta = 0.85``, ``eta_b = 1``, 20 steps with the uniform skip (``t = 950,
    900, .., 0``): ``steps`` denoiser calls, no backward pass.
    """
    run = _Run("ddrm", prior, problem, steps, t0, generator, text, need=NEEDS["ddrm"], init=init)
    eta = _number("ddrm", "eta", eta, 0.0, 1.0)
    eta_b = _number("ddrm", "eta_b", eta_b, 0.0, 1.0)
    view = run.view
    sv = view.singulars(run.device, run.dtype)
    measured = sv > 0
    s_safe = torch.where(measured, sv, torch.ones_like(sv))
    Uty = view.Ut(run.y).to(run.dtype)
    y_bar = torch.where(measured, Uty / s_safe, torch.zeros_like(Uty))
    sigma_y = run.sigma
    sig = lambda t: math.sqrt((1 - run.abar(t)) / run.abar(t))
    n = sv.numel()
    with torch.no_grad():
        if run.full:
            t = run.seq[0]
            sigma = sig(t)
            big = measured & (sv * sigma > sigma_y)
            spread = (sigma ** 2 - (sigma_y / s_safe) ** 2).clamp_min(0).sqrt()
            z = run.randn((run.B, n))
            c = torch.where(big, y_bar + spread * z, sigma * z)
            x = math.sqrt(run.abar(t)) * view.V(c)
        else:
            x = run.start()
        for t, s in run.pairs():
            eps = run.eps(x, t)
            x0 = run.x0(x, eps, t)
            sigma = sig(s) if s >= 0 else 0.0
            c0, e = view.Vt(x0), view.Vt(eps)
            z = run.randn((run.B, n))
            before = measured & (sv * sigma > sigma_y)
            after = measured & (sv * sigma < sigma_y)
            c = c0 + math.sqrt(1 - eta ** 2) * sigma * e + eta * sigma * z
            if sigma_y > 0:
                c_after = c0 + math.sqrt(1 - eta ** 2) * sigma * (Uty - sv * c0) / sigma_y + eta * sigma * z
                c = torch.where(after, c_after, c)
            spread = (sigma ** 2 - (eta_b * sigma_y / s_safe) ** 2).clamp_min(0).sqrt()
            c = torch.where(before, (1 - eta_b) * c0 + eta_b * y_bar + spread * z, c)
            x = math.sqrt(run.abar(s)) * view.V(c)
    return run.result(x, eta=eta, eta_b=eta_b)


def dps(prior: Prior, problem: Problem, *, steps: int | None = None, t0: float = 1.0,
        generator: torch.Generator | None = None, text: str = "", init: torch.Tensor | None = None,
        zeta: float | None = None) -> SolverResult:
    """DPS: diffusion posterior sampling (Chung et al. 2023, ``diffusion-posterior-sampling``, its
    Gaussian-noise ``ps`` method).

    Each step ``t -> s``: ``x0_hat(x_t)`` from the denoiser (with its graph), the ancestral step
    ``x'_s ~ q(x_s | x_t, x0_hat)``, then ``x_s = x'_s - zeta grad_{x_t} ||y - A(x0_hat(x_t))||``: the
    UNSQUARED norm, computed per sample (the original code takes one norm over the whole batch, which
    couples the samples), differentiated through the denoiser. The measurement noise is not modelled
    (``y`` as measured). ``A`` may be nonlinear (phase retrieval).

    ``zeta``: default :data:`DPS_ZETA` by operator name (DPS's configs), else :data:`DPS_ZETA_DEFAULT`.
    Defaults: 1000 steps: ``steps`` denoiser calls and ``steps`` backward passes. DPS samples with the
    network's learned variance; here the step's variance is the fixed ``beta~`` of ``q(x_s | x_t, x0)``.
    """
    run = _Run("dps", prior, problem, steps, t0, generator, text, need=NEEDS["dps"], init=init)
    zeta = DPS_ZETA.get(problem.operator.name, DPS_ZETA_DEFAULT) if zeta is None else zeta
    zeta = _number("dps", "zeta", zeta, 0.0)
    op, y = run.op, run.y
    with torch.no_grad():
        x = run.start()
        for t, s in run.pairs():
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                x0 = run.x0(xg, run.eps(xg, t, grad=True), t)
                dist = _norms(y - op.forward(x0)).sum()
                (g,) = torch.autograd.grad(dist, xg)
            x = run.ddpm(x, x0.detach(), t, s) - zeta * g
    return run.result(x, zeta=zeta)


def pigdm(prior: Prior, problem: Problem, *, steps: int | None = None, t0: float = 1.0,
          generator: torch.Generator | None = None, text: str = "", init: torch.Tensor | None = None,
          eta: float = 1.0,
          scale: float = 1.0) -> SolverResult:
    """PiGDM: pseudoinverse-guided diffusion models, noisy linear form (Song, Vahdat, Mardani and Kautz
    2023), on DDIM.

    ``p(x0 | x_t) ~ N(x0_hat, r_t^2 I)`` with ``r_t^2 = 1 - abar_t`` (the paper's
    ``sigma_t^2 / (1 + sigma_t^2)`` for unit-variance data) makes ``p(y | x_t) = N(A x0_hat, r_t^2 A A^T
    + sigma_y^2 I)`` and its score the vector-Jacobian product

        g = (d x0_hat / d x_t)^T A^T (r_t^2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat)
          = (d x0_hat / d x_t)^T V [s (U^T y - s V^T x0_hat) / (r_t^2 s^2 + sigma_y^2)]

    (through the spectral view, backpropagated through the denoiser). The guidance enters as a score:
    ``eps~ = eps - sqrt(1 - abar_t) scale g`` (so ``x0~ = x0_hat + (1 - abar_t) / sqrt(abar_t) scale g``),
    then the DDIM step ``x_s = sqrt(abar_s) x0~ + c1 z + c2 eps~``. With the unit-variance data that
    ``r_t`` assumes, ``g`` is the exact likelihood score and the sampler is exact as the steps shrink.
    (NVlabs' re-implementation instead adds ``sqrt(abar_s abar_t)`` times the noiseless VJP each step.)

    Defaults: 100 DDIM steps, ``eta = 1.0``, ``scale = 1``: ``steps`` denoiser calls and ``steps``
    backward passes.
    """
    run = _Run("pigdm", prior, problem, steps, t0, generator, text, need=NEEDS["pigdm"], init=init)
    eta = _number("pigdm", "eta", eta, 0.0, 1.0)
    scale = _number("pigdm", "scale", scale, 0.0)
    view = run.view
    sv = view.singulars(run.device, run.dtype)
    Uty = view.Ut(run.y).to(run.dtype)
    sigma2 = run.sigma ** 2
    with torch.no_grad():
        x = run.start()
        for t, s in run.pairs():
            a_t = run.abar(t)
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                eps = run.eps(xg, t, grad=True)
                x0 = run.x0(xg, eps, t)
                r2 = 1 - a_t
                denom = torch.where(sv > 0, r2 * sv ** 2 + sigma2, torch.ones_like(sv))
                v = view.V(sv * (Uty - sv * view.Vt(x0.detach())) / denom)
                (g,) = torch.autograd.grad((v * x0).sum(), xg)
            eps_g = eps.detach() - math.sqrt(1 - a_t) * scale * g
            x0_g = run.x0(x, eps_g, t)
            x = run.ddim(x0_g, eps_g, t, s, eta)
    return run.result(x, eta=eta, scale=scale)


def mcg(prior: Prior, problem: Problem, *, steps: int | None = None, t0: float = 1.0,
        generator: torch.Generator | None = None, text: str = "", init: torch.Tensor | None = None,
        alpha: float | None = None) -> SolverResult:
    """MCG: manifold-constrained gradient (Chung, Sim, Ryu and Ye 2022, ``MCG_diffusion``).

    Each step ``t -> s``: ``x0_hat(x_t)`` with its graph, the ancestral step ``x'_s ~ q(x_s | x_t,
    x0_hat)``, the manifold-constrained gradient of the unsquared per-sample residual
    ``||A^+(y - A x0_hat)||`` (MCG's ``||W (y - H x0_hat)||`` with ``W = A^+``: its inpainting, colorization
    and CT codes), restricted to the unmeasured subspace (``(I - A^+ A) g``, as MCG masks it), then the
    replacement of the measured component at level ``s``:

        x''_s = x'_s - alpha (I - A^+ A) grad_{x_t} ||A^+(y - A x0_hat)||,   x_s = x''_s - A^+(A x''_s - y_s)

    (The replacement overwrites the measured component anyway, so the mask does not change the result.)
    ``alpha``: default :data:`MCG_ALPHA` by operator name, else :data:`MCG_ALPHA_DEFAULT`. Defaults:
    1000 steps: ``steps`` denoiser calls and ``steps`` backward passes.
    """
    run = _Run("mcg", prior, problem, steps, t0, generator, text, need=NEEDS["mcg"], init=init)
    alpha = MCG_ALPHA.get(problem.operator.name, MCG_ALPHA_DEFAULT) if alpha is None else alpha
    alpha = _number("mcg", "alpha", alpha, 0.0)
    op, y = run.op, run.y
    with torch.no_grad():
        x = run.start()
        for t, s in run.pairs():
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                x0 = run.x0(xg, run.eps(xg, t, grad=True), t)
                dist = _norms(op.pinv(y - op.forward(x0))).sum()
                (g,) = torch.autograd.grad(dist, xg)
            g = g - op.pinv(op.forward(g))
            x = run.replace(run.ddpm(x, x0.detach(), t, s) - alpha * g, s)
    return run.result(x, alpha=alpha)


def reddiff(prior: Prior, problem: Problem, *, steps: int | None = None, t0: float = 1.0,
            generator: torch.Generator | None = None, text: str = "", init: torch.Tensor | None = None,
            lam: float = 0.25, lr: float = 0.1,
            weighting: str = "linear", obs_weight: float = 1.0) -> SolverResult:
    """RED-diff: variational posterior with the denoiser as a regulariser (Mardani, Song, Kautz and
    Vahdat 2023, NVlabs ``RED-diff``'s ``reddiff``).

    The variational distribution ``N(mu, sigma^2 I)`` collapses to its mean (``sigma_x0 = 0``): Adam on
    ``mu`` ``[B, C, H, W]`` (``lr``, betas (0.9, 0.99), eps 1e-8, elementwise: ``m <- b1 m + (1 - b1) g``,
    ``v <- b2 v + (1 - b2) g^2``, ``mu <- mu - lr m^ / (sqrt(v^) + eps)`` with the bias corrections ``^``),
    initialised at ``A^+ y`` (0 for a nonlinear operator), over the grid from the noisiest step down; at
    each ``t``, with ``z ~ N(0, I)`` and
    ``x_t = sqrt(abar_t) mu + sqrt(1 - abar_t) z``, the per-sample loss

        obs_weight mean((y - A mu)^2) / 2 + w_t mean(sg[eps(x_t, t) - z] * mu),
        w_t = lam * weighting(sqrt(1 - abar_t) / sqrt(abar_t))

    (``sg``: stop-gradient: the denoiser output is detached, no backward pass through it). The noisy
    ``y`` is used as it is, with the fixed ``obs_weight`` (as in the repository). Per-sample means
    (the repository takes means over the whole batch) keep the samples independent. The result is
    ``mu``: RED-diff is mode-seeking, its samples spread far less than the posterior.

    Defaults (the repository's config): ``lam = 0.25``, ``lr = 0.1``, ``weighting = "linear"``
    (1 / SNR^(1/2); see :data:`REDDIFF_WEIGHTINGS`), 1000 steps: ``steps`` denoiser calls, 0 backward.
    """
    run = _Run("reddiff", prior, problem, steps, t0, generator, text, need=NEEDS["reddiff"], init=init)
    lam = _number("reddiff", "lam", lam, 0.0)
    lr = _number("reddiff", "lr", lr, 0.0, lo_open=True)
    obs_weight = _number("reddiff", "obs_weight", obs_weight, 0.0)
    if weighting not in REDDIFF_WEIGHTINGS:
        raise ValueError(f"reddiff: weighting must be one of {REDDIFF_WEIGHTINGS}, got {weighting!r}")
    weigh = {"linear": lambda r: r, "sqrt": math.sqrt, "square": lambda r: r * r, "log": lambda r: math.log1p(r),
             "trunc_linear": lambda r: min(r, 1.0), "power2over3": lambda r: r ** (2 / 3),
             "const": lambda r: 1.0}[weighting]
    op, y = run.op, run.y
    beta1, beta2, adam_eps = 0.9, 0.99, 1e-8
    mu = run.init_image().clone()
    m1, m2 = torch.zeros_like(mu), torch.zeros_like(mu)
    for k, t in enumerate(run.seq, start=1):
        a = run.abar(t)
        w = lam * weigh(math.sqrt(1 - a) / math.sqrt(a))
        z = run.randn()
        with torch.no_grad():
            noise = run.eps(math.sqrt(a) * mu + math.sqrt(1 - a) * z, t) - z
        with torch.enable_grad():
            mu_g = mu.detach().requires_grad_(True)
            obs = (y - op.forward(mu_g)) ** 2
            loss = (obs_weight / 2) * obs.reshape(run.B, -1).mean(1).sum() \
                + w * (noise * mu_g).reshape(run.B, -1).mean(1).sum()
            (g,) = torch.autograd.grad(loss, mu_g)
        with torch.no_grad():
            m1 = beta1 * m1 + (1 - beta1) * g
            m2 = beta2 * m2 + (1 - beta2) * g * g
            mu = mu - lr * (m1 / (1 - beta1 ** k)) / ((m2 / (1 - beta2 ** k)).sqrt() + adam_eps)
    return run.result(mu.detach(), lam=lam, lr=lr, weighting=weighting, obs_weight=obs_weight)


_FUNCTIONS = {"scoresde": scoresde, "ilvr": ilvr, "snips": snips, "ddrm": ddrm, "dps": dps, "pigdm": pigdm,
              "mcg": mcg, "reddiff": reddiff}
_COMMON = ("prior", "problem", "steps", "t0", "generator", "text", "init")


def solve(method: str, prior: Prior, problem: Problem, *, steps: int | None = None, t0: float = 1.0,
          generator: torch.Generator | None = None, text: str = "", init: torch.Tensor | None = None,
          **options) -> SolverResult:
    """Solve ``problem`` with ``method`` (one of :data:`METHODS`) on the pixel prior ``prior``.

    Args:
        method: ``"scoresde"``, ``"ilvr"``, ``"snips"``, ``"ddrm"``, ``"dps"``, ``"pigdm"``, ``"mcg"``
            or ``"reddiff"``.
        prior: a :class:`~pyengine.diffusion.prior.Prior` with ``latent = False``.
        problem: a :class:`~pyengine.inverse.base.Problem` in [0, 1] units; ``B = problem.y.shape[0]``
            samples, one per measurement row.
        steps: grid steps (default :data:`DEFAULT_STEPS`), ``1 <= steps <= T``.
        t0: CCDF's start ``t0 * T`` in (0, 1] (module docstring); 1 = the full run.
        generator: the source of all randomness.
        text: the prompt, encoded once with ``prior.encode_text`` ("" = unconditional).
        init: CCDF's starting image ``[B or 1, C, H, W]`` in [0, 1] units (e.g. a classical
            baseline's output), forward-diffused to ``t0``; default ``A^+ y`` (0 for nonlinear
            operators). RED-diff starts its mean there too.
        **options: the method's own keywords (e.g. ``eta`` for ddrm, ``zeta`` for dps).

    Returns:
        :class:`SolverResult`.

    Example:
        >>> from pyengine.diffusion.gaussian_prior import GaussianPrior
        >>> from pyengine.inverse.base import Problem
        >>> from pyengine.inverse.dense import DenseOperator
        >>> prior = GaussianPrior(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.3))
        >>> op = DenseOperator(torch.randn(6, 16), (1, 4, 4))
        >>> y = op.forward(prior.sample(1)).expand(4, 6)
        >>> res = solve("ddrm", prior, Problem(op, y, 0.05), generator=torch.Generator().manual_seed(0))
        >>> tuple(res.x.shape), res.calls, res.backward
        ((4, 1, 4, 4), 20, 0)
    """
    if method not in METHODS:
        raise ValueError(f"solve: unknown method {method!r}; one of {', '.join(METHODS)}")
    fn = _FUNCTIONS[method]
    own = [p for p in inspect.signature(fn).parameters if p not in _COMMON]
    unknown = sorted(set(options) - set(own))
    if unknown:
        raise ValueError(f"solve: {method} has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(own) if own else 'none'}")
    return fn(prior, problem, steps=steps, t0=t0, generator=generator, text=text, init=init, **options)
