"""An analytic pixel prior: images ``x ~ N(mu, diag(var))`` with the exact noise prediction.

For data ``x_0 ~ N(mu, diag(var))`` (in the prior's [-1, 1] space) and the forward process
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, ``x_t ~ N(sqrt(abar_t) mu, abar_t var + 1 - abar_t)``
coordinate by coordinate, and the minimum-mean-square noise estimate is closed form:

    E[eps | x_t] = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / (abar_t var + 1 - abar_t)

(``Cov(eps, x_t) = sqrt(1 - abar_t) I``). :class:`GaussianPrior` is a :class:`~pyengine.diffusion.prior.Prior`
whose denoiser is this formula: the optimal denoiser of its data, so that a diffusion solver for
inverse problems run on it can be compared with the exact Gaussian posterior
(:meth:`GaussianPrior.linear_posterior`). It is the analytic prior of the tests of
``pyengine.inverse`` and a sanity-check prior for its benchmarks.
"""

from __future__ import annotations

import torch

from pyengine.diffusion.prior import Prior
from pyengine.diffusion.schedule import NoiseSchedule, _gather


class GaussianPrior(Prior):
    """A pixel prior with data ``N(mu, diag(var))`` in [-1, 1] space and its exact epsilon prediction.

    Args:
        mu: ``[C, H, W]`` mean of the data in the prior's [-1, 1] space (``2 x - 1`` of [0, 1] images).
        var: ``[C, H, W]`` variances (> 0) in the same space.
        schedule: a :class:`~pyengine.diffusion.NoiseSchedule`, or the name of one (``"linear"``,
            ``"cosine"``) built over ``timesteps`` steps. Default: DDPM's linear schedule over 1000
            steps (betas 1e-4 .. 0.02), the schedule the solvers' published step sizes were tuned on.
            (The bundled ShapeWorld prior's weights file asks for ``cosine``; pass ``"cosine"`` to match it.)
        timesteps: ``T`` when ``schedule`` is a name.
        clamp: whether :meth:`decode` clamps to [0, 1] (the Gaussian tests turn it off so that
            samples keep their exact distribution).

    Text is ignored: :meth:`encode_text` returns a dummy ``[B, 1]`` embedding.

    Example:
        >>> prior = GaussianPrior(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.2), clamp=False)
        >>> x = prior.sample(8, generator=torch.Generator().manual_seed(0))   # [8, 1, 4, 4] in [0, 1] units
        >>> tuple(x.shape)
        (8, 1, 4, 4)
    """

    latent = False
    prediction = "eps"
    name = "gaussian prior"

    def __init__(self, mu: torch.Tensor, var: torch.Tensor, schedule: NoiseSchedule | str = "linear",
                 timesteps: int = 1000, clamp: bool = True):
        super().__init__()
        if not isinstance(mu, torch.Tensor) or not mu.is_floating_point() or mu.dim() != 3:
            raise ValueError(f"GaussianPrior: mu must be a floating [C, H, W] tensor, got "
                             f"{tuple(mu.shape) if isinstance(mu, torch.Tensor) else type(mu).__name__}")
        var = torch.as_tensor(var, dtype=mu.dtype, device=mu.device)
        if var.shape != mu.shape:
            raise ValueError(f"GaussianPrior: var must have mu's shape {tuple(mu.shape)}, got {tuple(var.shape)}")
        if not bool(torch.isfinite(mu).all()) or not bool(((var > 0) & torch.isfinite(var)).all()):
            raise ValueError("GaussianPrior: mu must be finite and var finite and > 0")
        if isinstance(schedule, str):
            schedule = NoiseSchedule.from_name(schedule, int(timesteps))
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"GaussianPrior: schedule must be a NoiseSchedule or a name, got "
                             f"{type(schedule).__name__}")
        self.register_buffer("mu", mu.detach().clone())
        self.register_buffer("var", var.detach().clone())
        self.schedule = schedule
        self.channels = int(mu.shape[0])
        self.image_shape = tuple(int(s) for s in mu.shape)
        self.resolution = int(mu.shape[-1])
        self.clamp = bool(clamp)

    # -- text -------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """``[B, 1]`` zeros: the Gaussian prior is unconditional."""
        for p in prompts:
            self.check_prompt(p)
        return self.mu.new_zeros(len(prompts), 1)

    # -- images -----------------------------------------------------------------------------
    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] -> ``2 x - 1`` (no resizing: the images must have the prior's shape)."""
        if rgb.dim() != 4 or tuple(rgb.shape[1:]) != self.image_shape:
            raise ValueError(f"{self.name}: images must be [B, {', '.join(map(str, self.image_shape))}], "
                             f"got {tuple(rgb.shape)}")
        return rgb * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """``(x + 1) / 2``, clamped to [0, 1] unless the prior was built with ``clamp=False``."""
        out = (x + 1) / 2
        return out.clamp(0, 1) if self.clamp else out

    # -- denoising --------------------------------------------------------------------------
    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The exact ``E[eps | x_t]`` (differentiable in ``x_t``)."""
        a = _gather(self.schedule.alphas_cumprod, t, x_t)
        mu, var = self.mu.to(x_t.dtype), self.var.to(x_t.dtype)
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * var + 1 - a)

    # -- the analytic answers the tests and benchmarks compare with -------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, C, H, W]`` draws from the data distribution, in [0, 1] units (unclamped)."""
        dev = generator.device if generator is not None else self.mu.device
        z = torch.randn((int(n), *self.image_shape), generator=generator, device=dev, dtype=self.mu.dtype)
        return (self.mu + self.var.sqrt() * z.to(self.mu.device) + 1) / 2

    def linear_posterior(self, matrix: torch.Tensor, y: torch.Tensor, sigma_y: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior of ``x`` (in [0, 1] units) given ``y = M x + sigma_y n``, ``n ~ N(0, I)``.

        Args:
            matrix: ``[m, n]`` with ``n = C H W`` (``x`` flattened in C, H, W order).
            y: ``[m]`` measurement in [0, 1] units.
            sigma_y: noise level in [0, 1] units (0 allowed when ``M diag(var) M^T`` is invertible).

        Returns:
            ``(mean [C, H, W], covariance [n, n])`` in float64: with the prior ``N(m, S)`` in [0, 1]
            units (``m = (mu + 1) / 2``, ``S = diag(var) / 4``) and ``K = S M^T (M S M^T + sigma_y^2 I)^-1``,
            ``mean = m + K (y - M m)`` and ``covariance = S - K M S``.
        """
        M = matrix.detach().to(torch.float64).cpu()
        m = ((self.mu.detach().to(torch.float64).cpu() + 1) / 2).reshape(-1)
        S = torch.diag(self.var.detach().to(torch.float64).cpu().reshape(-1) / 4)
        if M.dim() != 2 or M.shape[1] != m.numel():
            raise ValueError(f"linear_posterior: matrix must be [m, {m.numel()}], got {tuple(M.shape)}")
        yv = y.detach().to(torch.float64).cpu().reshape(-1)
        if yv.numel() != M.shape[0]:
            raise ValueError(f"linear_posterior: y must have {M.shape[0]} entries, got {yv.numel()}")
        G = M @ S @ M.T + float(sigma_y) ** 2 * torch.eye(M.shape[0], dtype=torch.float64)
        K = torch.linalg.solve(G, M @ S).T
        mean = m + K @ (yv - M @ m)
        cov = S - K @ M @ S
        return mean.reshape(self.image_shape), (cov + cov.T) / 2
