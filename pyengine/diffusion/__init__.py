"""Diffusion maths shared by the priors: noise schedules, the training loss and samplers.

Everything here works on tensors of any shape ``[B, ...]`` (point clouds ``[B, 3, N]``, images
``[B, C, H, W]``, videos ``[B, C, T, H, W]``) and on any model called as
``model(x_t, t, y) -> eps`` (``t``: ``[B]`` int64 step indices, ``y``: labels or None), or a model
that outputs ``v`` or ``x0`` instead (``prediction=``).
"""

from pyengine.diffusion.sampling import complete, ddim_sample, ddim_timesteps, ddpm_sample
from pyengine.diffusion.schedule import PREDICTIONS, NoiseSchedule, training_loss

__all__ = ["PREDICTIONS", "NoiseSchedule", "complete", "ddim_sample", "ddim_timesteps", "ddpm_sample", "training_loss"]
