"""Text-to-image diffusion priors as the score-distillation engines see them.

A :class:`Prior` is a frozen text-to-image denoiser with everything SDS needs around it:

- its noise schedule (``schedule``: ``alphas_cumprod`` of its ``T`` training steps);
- text encoding (``encode_text``: a batch-first tensor, whatever the prior's own form: a pooled
  vector, a sequence of hidden states), the unconditional / negative prompt, and DreamFusion's
  view-dependent prompts (``view_prompt``: ``"a red cube, side view"``);
- the image space it denoises (``encode_images`` from rendered RGB in [0, 1], ``decode`` back):
  pixels at ``resolution`` for a pixel prior (the ShapeWorld prior, DeepFloyd IF stage I), latents
  of its autoencoder for a latent prior (Stable Diffusion);
- ``predict_noise(x_t, t, text)``: the epsilon estimate at integer steps ``t``, whatever the
  network predicts natively (epsilon or v), and ``guided_noise`` with classifier-free guidance.

Priors shipped here: :class:`ShapeWorldPrior` (``pyengine.diffusion.shapeworld_prior``, the bundled
one trained by ``pyengine train-prior images``) and the diffusers loaders
(``pyengine.diffusion.diffusers_prior``: Stable Diffusion 1.x/2.x, DeepFloyd IF stage I, from a
local folder). ``load_prior(spec)`` picks one from a string.
"""

from __future__ import annotations

import os

import torch

from pyengine.diffusion.schedule import NoiseSchedule

VIEWS = ("front", "side", "back", "overhead")


def view_of(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, overhead_deg: float = 60.0,
            front_azimuth_deg: float = 0.0) -> list[str]:
    """DreamFusion's view word of each camera: ``overhead`` above ``overhead_deg`` of elevation,
    else ``front`` within 45 degrees of ``front_azimuth_deg``, ``back`` within 45 degrees of the
    opposite azimuth, ``side`` otherwise."""
    el = torch.as_tensor(elevation_deg, dtype=torch.float64).reshape(-1)
    az = (torch.as_tensor(azimuth_deg, dtype=torch.float64).reshape(-1) - front_azimuth_deg) % 360.0
    if el.shape != az.shape:
        raise ValueError(f"view_of: elevation and azimuth must have the same number of cameras, got "
                         f"{el.numel()} and {az.numel()}")
    out = []
    for e, a in zip(el.tolist(), az.tolist()):
        if e > overhead_deg:
            out.append("overhead")
        elif a < 45.0 or a >= 315.0:
            out.append("front")
        elif 135.0 <= a < 225.0:
            out.append("back")
        else:
            out.append("side")
    return out


class Prior(torch.nn.Module):
    """A frozen text-to-image diffusion model, as score distillation uses it.

    Subclasses set ``schedule``, ``resolution`` (the side of the image ``encode_images`` makes
    from a render), ``latent`` and ``channels`` (of the denoised space), and implement
    ``encode_text``, ``encode_images``, ``decode`` and ``_denoise``.

    Attributes:
        schedule: the :class:`~pyengine.diffusion.NoiseSchedule` of its training.
        prediction: what the network predicts: ``"eps"`` or ``"v"`` (``predict_noise`` converts).
        overhead_deg: above this elevation a view is ``"overhead"`` (``view_prompt``).
    """

    schedule: NoiseSchedule
    resolution: int = 64
    latent: bool = False
    channels: int = 3
    prediction: str = "eps"
    overhead_deg: float = 60.0
    name: str = "prior"

    # -- text -------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """``[B, ...]`` embeddings of the prompts (``""``: the unconditional prompt)."""
        raise NotImplementedError

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError when the prior cannot read ``prompt`` (e.g. unknown words)."""
        if not isinstance(prompt, str):
            raise ValueError(f"{self.name}: a prompt must be a string, got {type(prompt).__name__}")

    def view_prompt(self, prompt: str, view: str) -> str:
        """``prompt`` with DreamFusion's view suffix: ``"a red cube"`` -> ``"a red cube, side view"``."""
        if view not in VIEWS:
            raise ValueError(f"view_prompt: view must be one of {VIEWS}, got {view!r}")
        return f"{prompt}, {view} view"

    def view_prompts(self, prompt: str, elevation_deg, azimuth_deg) -> list[str]:
        """One view-dependent prompt per camera."""
        return [self.view_prompt(prompt, v) for v in view_of(elevation_deg, azimuth_deg, self.overhead_deg)]

    # -- images -----------------------------------------------------------------------------
    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` RGB in [0, 1] (differentiable) -> ``[B, channels, h, w]`` in the denoised space."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, channels, h, w]`` -> ``[B, 3, H, W]`` RGB in [0, 1]."""
        raise NotImplementedError

    # -- denoising --------------------------------------------------------------------------
    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The network's native output (``prediction``) at ``x_t`` [B, C, h, w], steps ``t`` [B]."""
        raise NotImplementedError

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Epsilon estimate ``[B, C, h, w]`` at ``x_t`` and integer steps ``t`` (``[B]`` or a scalar)
        for text embeddings ``text`` (``[B, ...]``, or ``[1, ...]`` broadcast)."""
        B = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"{self.name}: t must be a scalar or [B] = [{B}] steps, got {tuple(t.shape)}")
        t = t.long()
        if text.shape[0] == 1 and B > 1:
            text = text.expand(B, *text.shape[1:])
        out = self._denoise(x_t, t, text)
        return self.schedule.eps_from(x_t, t, out.to(x_t.dtype), self.prediction).to(x_t.dtype)

    def guided_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Classifier-free guidance in one batched call: ``(guided, conditional, unconditional)`` epsilons,
        ``guided = uncond + scale * (cond - uncond)``."""
        B = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).reshape(-1)
        t = t.expand(B) if t.numel() == 1 else t
        if cond.shape[0] == 1 and B > 1:
            cond = cond.expand(B, *cond.shape[1:])
        if uncond.shape[0] == 1 and B > 1:
            uncond = uncond.expand(B, *uncond.shape[1:])
        eps = self.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
        e_c, e_u = eps.chunk(2)
        return e_u + scale * (e_c - e_u), e_c, e_u

    def alphas_cumprod(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return self.schedule.alphas_cumprod.to(device=device, dtype=dtype)

    # -- VSD ------------------------------------------------------------------------------
    def lora_denoiser(self, rank: int = 4, camera_dim: int = 16) -> torch.nn.Module:
        """A trainable copy of the denoiser for Variational Score Distillation: the frozen network
        with rank-``rank`` LoRA adapters and a camera embedding (``forward(x_t, t, text, camera
        [B, 16 or None]) -> epsilon``). Priors that cannot make one raise NotImplementedError."""
        raise NotImplementedError(f"{self.name}: Variational Score Distillation (a LoRA copy of the denoiser) "
                                  "is not available for this prior")


def load_prior(spec: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Prior:
    """A prior from a string:

    - ``"shapeworld"`` (the bundled ``pyengine/assets/image_prior.safetensors``) or a path to a
      ``.safetensors`` file written by ``pyengine train-prior images export``;
    - ``"sd:FOLDER"``: a local diffusers Stable Diffusion 1.x/2.x pipeline folder;
    - ``"if:FOLDER"``: a local DeepFloyd IF stage I pipeline folder;
    - ``"ddpm:FOLDER"``: a local unconditional pixel diffusion folder (``unet/`` a diffusers
      ``UNet2DModel``, ``scheduler/``), e.g. a saved ``DDPMPipeline``.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"load_prior: spec must be 'shapeworld', a .safetensors path, 'sd:FOLDER', 'if:FOLDER' or "
                         f"'ddpm:FOLDER', got {spec!r}")
    if spec.startswith(("sd:", "if:", "ddpm:")):
        kind, path = spec.split(":", 1)
        if not os.path.isdir(path):
            raise ValueError(f"load_prior: {path!r} is not a folder (a local diffusers pipeline is expected for "
                             f"{kind}:)")
        from pyengine.diffusion import diffusers_prior

        cls = {"sd": diffusers_prior.StableDiffusionPrior, "if": diffusers_prior.DeepFloydIFPrior,
               "ddpm": diffusers_prior.UnconditionalPixelPrior}[kind]
        return cls.from_pretrained(path, device=device, dtype=dtype)
    from pyengine.diffusion.shapeworld_prior import BUNDLED, ShapeWorldPrior

    path = BUNDLED if spec in ("shapeworld", "bundled") else spec
    if not os.path.exists(path):
        hint = (" (no bundled image prior ships with this pyengine yet: train one with `pyengine train-prior "
                "images`)" if path == BUNDLED else "")
        raise ValueError(f"load_prior: prior file {path!r} does not exist{hint}")
    return ShapeWorldPrior.from_file(path, device=device, dtype=dtype)
