"""DDPM noise schedules and the epsilon-prediction training loss.

Notation (Ho et al. 2020): ``beta_t`` for t = 0 .. T-1, ``alpha_t = 1 - beta_t``,
``abar_t = prod_{s <= t} alpha_s``. The forward process is
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``eps ~ N(0, I)``; the model predicts ``eps``.
The tables are kept in float64 and cast to the data's dtype when gathered.
"""

from __future__ import annotations

import math

import torch


def _gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table[t]`` shaped ``[B, 1, ..., 1]`` to broadcast against ``like`` ``[B, ...]``."""
    out = table.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule:
    """A discrete noise schedule of ``T`` steps and the derived tables.

    Args:
        betas: [T] variances of the forward steps, each in (0, 1).

    Example:
        >>> s = NoiseSchedule.linear(1000)        # PVD's / DDPM's schedule
        >>> round(float(s.alphas_cumprod[-1]), 6)
        4e-05
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("NoiseSchedule: betas must be a non-empty vector of values in (0, 1)")
        self.betas = betas
        self.T = betas.numel()
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_abar = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_abar = (1 - self.alphas_cumprod).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, posterior_variance)
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_coef_x0 = betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_coef_xt = (1 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1 - self.alphas_cumprod)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """Linearly spaced betas (DDPM, PVD: 1e-4 .. 0.02 over 1000 steps)."""
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal's cosine schedule: ``abar(t) = f(t) / f(0)``,
        ``f(t) = cos(((t / T + s) / (1 + s)) pi / 2)^2``, betas clipped at ``max_beta``."""
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return cls((1 - abar[1:] / abar[:-1]).clamp(max=max_beta))

    @classmethod
    def from_name(cls, name: str, T: int = 1000, **kwargs) -> NoiseSchedule:
        if name == "linear":
            return cls.linear(T, **kwargs)
        if name == "cosine":
            return cls.cosine(T, **kwargs)
        raise ValueError(f"NoiseSchedule: unknown schedule {name!r} (linear, cosine)")

    # -- forward process and the model's parametrisation ------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t`` from ``x_0`` [B, ...], steps ``t`` [B] and ``noise`` like ``x0``."""
        a = _gather(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        a = _gather(self.alphas_cumprod, t, xt)
        return (xt - (1 - a).sqrt() * eps) / a.sqrt()

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prediction: str = "eps") -> torch.Tensor:
        """What a model of output type ``prediction`` is trained to give at ``x_t = q_sample(x0, t, noise)``:
        ``"eps"`` the noise, ``"x0"`` the clean data, ``"v"`` ``sqrt(abar) eps - sqrt(1 - abar) x0``
        (Salimans and Ho 2022)."""
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        if prediction == "v":
            return _gather(self.sqrt_abar, t, x0) * noise - _gather(self.sqrt_one_minus_abar, t, x0) * x0
        raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")

    def eps_from(self, xt: torch.Tensor, t: torch.Tensor, out: torch.Tensor, prediction: str = "eps") -> torch.Tensor:
        """The noise estimate implied by a model output ``out`` of type ``prediction`` at ``x_t``."""
        if prediction == "eps":
            return out
        a, s = _gather(self.sqrt_abar, t, xt), _gather(self.sqrt_one_minus_abar, t, xt)
        if prediction == "v":
            return s * xt + a * out
        if prediction == "x0":
            return (xt - a * out) / s
        raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_{t-1} | x_t, x_0)`` (variance ``[B, 1, ...]``; 0 at t = 0)."""
        mean = _gather(self.posterior_coef_x0, t, xt) * x0 + _gather(self.posterior_coef_xt, t, xt) * xt
        return mean, _gather(self.posterior_variance, t, xt)


PREDICTIONS = ("eps", "v", "x0")


def training_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, y=None, generator: torch.Generator | None = None,
                  known_mask: torch.Tensor | None = None, prediction: str = "eps",
                  t: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of the model's output against its target at uniformly drawn (or given) steps: with
    ``prediction="eps"`` DDPM's simple loss (PVD's training loss).

    Args:
        model: ``model(x_t, t, y) -> eps`` (or ``v`` / ``x0``: see ``prediction``; ``y`` is passed only
            when not None).
        schedule: the noise schedule.
        x0: [B, ...] clean data.
        y: optional labels passed to the model.
        generator: draws ``t`` and the noise (on ``x0``'s device).
        known_mask: optional bool, broadcastable to ``x0``: entries that stay clean in ``x_t`` and
            are left out of the loss (PVD's completion training: the observed partial points are
            given uncorrupted and only the rest is denoised).
        prediction: the model's output type, ``"eps"``, ``"v"`` or ``"x0"`` (see
            :meth:`NoiseSchedule.target`). ``v`` keeps the implied ``x_0`` accurate at the noisiest
            steps, where an epsilon model's error is multiplied by ``1 / sqrt(abar_t)`` (about 160
            at ``t = T - 1`` of the linear schedule).
        t: optional [B] int64 timesteps in [0, T) to use instead of uniform draws (e.g. a
            schedule that visits the noisiest steps more often); the noise is still drawn.

    Returns:
        0-d loss: mean over the (unknown) entries of ``(output - target)^2``.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"training_loss: prediction must be one of {PREDICTIONS}, got {prediction!r}")
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (B,), generator=generator, device=x0.device)
    else:
        ok = isinstance(t, torch.Tensor) and t.shape == (B,) and t.dtype == torch.long
        if not ok or (B and (int(t.min()) < 0 or int(t.max()) >= schedule.T)):
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"training_loss: t must be [B] = [{B}] int64 timesteps in [0, {schedule.T}), got {got}")
        t = t.to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = schedule.q_sample(x0, t, noise)
    if known_mask is not None:
        xt = torch.where(known_mask, x0, xt)
    out = model(xt, t) if y is None else model(xt, t, y)
    err = (out - schedule.target(x0, t, noise, prediction)) ** 2
    if known_mask is None:
        return err.mean()
    weight = (~known_mask).to(err.dtype).expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1)
