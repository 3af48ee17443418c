"""Samplers: ancestral DDPM, DDIM, and PVD's completion scheme (known entries held fixed).

Both samplers take the same optional ``known`` / ``known_mask`` pair: after every step (and at the
start) the entries where ``known_mask`` is true are replaced by ``known`` — as it is
(``known_mode="clean"``, PVD's shape completion: the observed partial points stay fixed and a
model trained with :func:`~pyengine.diffusion.training_loss`'s ``known_mask`` generates the rest) or
noised to the current step (``known_mode="noised"``, which lets a plain generation model complete,
as in RePaint without resampling). The returned sample holds ``known`` exactly where the mask is set.

Noise is drawn in the same order by both samplers (one draw per step but the last), so DDIM with
``eta=1`` over all ``T`` steps reproduces DDPM's ancestral sampling up to rounding.
"""

from __future__ import annotations

import torch

from pyengine.diffusion.schedule import PREDICTIONS, NoiseSchedule, _gather


def _eps(model, x, t, y, schedule=None, prediction="eps"):
    """The model's noise estimate at ``x``, step ``t`` (its output converted from ``prediction``)."""
    tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
    out = model(x, tt) if y is None else model(x, tt, y)
    return out if prediction == "eps" else schedule.eps_from(x, tt, out, prediction)


def _check_prediction(prediction):
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def _replace_known(x, known, known_mask, known_mode, schedule, t, generator):
    """``x`` with the known entries set to their value at step ``t`` (``t < 0``: clean)."""
    if known_mask is None:
        return x
    if known_mode == "clean" or t < 0:
        value = known
    elif known_mode == "noised":
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        value = schedule.q_sample(known, tt, torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    else:
        raise ValueError(f"known_mode must be 'clean' or 'noised', got {known_mode!r}")
    return torch.where(known_mask, value, x)


def _start(shape, x_T, generator, device, dtype, known, known_mask):
    if (known is None) != (known_mask is None):
        raise ValueError("known and known_mask must be given together")
    if x_T is not None:
        return x_T.to(device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _steps(seq, progress, desc):
    if not progress:
        return seq
    from tqdm import tqdm

    return tqdm(seq, desc=desc, unit="step", leave=False)


@torch.no_grad()
def ddpm_sample(model, schedule: NoiseSchedule, shape, y=None, generator: torch.Generator | None = None,
                device=None, dtype=torch.float32, known: torch.Tensor | None = None,
                known_mask: torch.Tensor | None = None, known_mode: str = "clean", x_T: torch.Tensor | None = None,
                clip_x0: float | None = None, prediction: str = "eps", progress: bool = False) -> torch.Tensor:
    """Ancestral sampling over all ``T`` steps with the posterior variance (DDPM's "fixed small",
    PVD's choice): ``x_{t-1} ~ N(mu(x_t, x0_pred), beta~_t)``.

    Args:
        model: ``model(x_t, t [B] int64, y) -> eps``.
        schedule: the noise schedule the model was trained with.
        shape: ``[B, ...]`` of the samples.
        y: optional labels passed to the model.
        generator: for the initial noise and every step's noise.
        device, dtype: of the samples (default the generator's device, float32).
        known, known_mask: entries held fixed (see the module docstring).
        known_mode: ``"clean"`` or ``"noised"``.
        x_T: optional starting noise (else drawn).
        clip_x0: clamp the predicted ``x_0`` to ``[-clip_x0, clip_x0]`` (images); None: no clamp.
        prediction: what the model outputs, ``"eps"``, ``"v"`` or ``"x0"`` (as it was trained by
            :func:`~pyengine.diffusion.training_loss`).
        progress: show a progress bar.

    Returns:
        [B, ...] samples.

    Example:
        >>> s = NoiseSchedule.linear(50)
        >>> x = ddpm_sample(lambda x, t: torch.zeros_like(x), s, (2, 3, 16))
        >>> x.shape
        torch.Size([2, 3, 16])
    """
    _check_prediction(prediction)
    device = device if device is not None else (generator.device if generator is not None else "cpu")
    x = _start(shape, x_T, generator, device, dtype, known, known_mask)
    x = _replace_known(x, known, known_mask, known_mode, schedule, schedule.T - 1, generator)
    for t in _steps(range(schedule.T - 1, -1, -1), progress, "ddpm"):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = schedule.predict_x0(x, tt, _eps(model, x, t, y, schedule, prediction))
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        mean, var = schedule.posterior(x0, x, tt)
        if t > 0:
            x = mean + var.sqrt() * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        else:
            x = mean
        x = _replace_known(x, known, known_mask, known_mode, schedule, t - 1, generator)
    return x


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` indices evenly spaced over ``[0, T-1]`` (both ends included), descending."""
    if not 1 <= steps <= T:
        raise ValueError(f"ddim steps must be in [1, {T}], got {steps}")
    ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().unique().tolist()
    return ts[::-1]


@torch.no_grad()
def ddim_sample(model, schedule: NoiseSchedule, shape, steps: int = 50, eta: float = 0.0, y=None,
                generator: torch.Generator | None = None, device=None, dtype=torch.float32,
                known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None, known_mode: str = "clean",
                x_T: torch.Tensor | None = None, clip_x0: float | None = None, prediction: str = "eps",
                progress: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021) over ``steps`` of the ``T`` steps.

    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``: ``eta=0`` is
    deterministic, ``eta=1`` with ``steps=T`` is DDPM's ancestral sampler. Arguments as in
    :func:`ddpm_sample`.

    Example:
        >>> s = NoiseSchedule.linear(1000)
        >>> ddim_sample(lambda x, t: torch.zeros_like(x), s, (1, 3, 8), steps=10).shape
        torch.Size([1, 3, 8])
    """
    _check_prediction(prediction)
    device = device if device is not None else (generator.device if generator is not None else "cpu")
    ts = ddim_timesteps(schedule.T, steps)
    x = _start(shape, x_T, generator, device, dtype, known, known_mask)
    x = _replace_known(x, known, known_mask, known_mode, schedule, ts[0], generator)
    abar = schedule.alphas_cumprod
    for i, t in enumerate(_steps(ts, progress, "ddim")):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = _eps(model, x, t, y, schedule, prediction)
        x0 = schedule.predict_x0(x, tt, eps)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - _gather(abar, tt, x).sqrt() * x0) / (1 - _gather(abar, tt, x)).sqrt()
        a_t = abar[t]
        a_prev = abar[prev] if prev >= 0 else abar.new_tensor(1.0)
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        c_dir = (1 - a_prev - sigma ** 2).clamp_min(0).sqrt()
        x = float(a_prev.sqrt()) * x0 + float(c_dir) * eps
        if prev >= 0:
            x = x + float(sigma) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = _replace_known(x, known, known_mask, known_mode, schedule, prev, generator)
    return x


@torch.no_grad()
def complete(model, schedule: NoiseSchedule, partial: torch.Tensor, n_total: int, y=None, sampler: str = "ddpm",
             steps: int = 50, eta: float = 0.0, known_mode: str = "clean", generator: torch.Generator | None = None,
             prediction: str = "eps", clip_x0: float | None = None, progress: bool = False) -> torch.Tensor:
    """Shape completion (PVD): keep the ``M`` observed points and generate ``n_total - M`` more.

    Args:
        model: ``model(x [B, C, n_total], t, y) -> eps``.
        partial: [B, C, M] observed points.
        n_total: points in the completed cloud (> M).
        sampler: ``"ddpm"`` or ``"ddim"`` (``steps``, ``eta``).
        known_mode: ``"clean"`` for a model trained on clean partial points (PVD), ``"noised"`` for
            a generation model.
        prediction, clip_x0: as in :func:`ddpm_sample`.

    Returns:
        [B, C, n_total]: the first M points are ``partial`` exactly, the rest generated.

    Example:
        >>> s = NoiseSchedule.linear(20)
        >>> part = torch.rand(2, 3, 5)
        >>> out = complete(lambda x, t: torch.zeros_like(x), s, part, 12)
        >>> bool((out[..., :5] == part).all()), out.shape
        (True, torch.Size([2, 3, 12]))
    """
    B, C, M = partial.shape
    if not 0 < M < n_total:
        raise ValueError(f"complete: need 0 < partial points ({M}) < n_total ({n_total})")
    known = partial.new_zeros(B, C, n_total)
    known[..., :M] = partial
    mask = torch.zeros(1, 1, n_total, dtype=torch.bool, device=partial.device)
    mask[..., :M] = True
    kw = dict(y=y, generator=generator, device=partial.device, dtype=partial.dtype, known=known, known_mask=mask,
              known_mode=known_mode, prediction=prediction, clip_x0=clip_x0, progress=progress)
    if sampler == "ddpm":
        return ddpm_sample(model, schedule, known.shape, **kw)
    if sampler == "ddim":
        return ddim_sample(model, schedule, known.shape, steps=steps, eta=eta, **kw)
    raise ValueError(f"complete: sampler must be 'ddpm' or 'ddim', got {sampler!r}")
