"""Real priors from a local diffusers pipeline folder: Stable Diffusion, DeepFloyd IF and pixel DDPMs.

:class:`StableDiffusionPrior` (Stable Diffusion 1.x / 2.x, a latent prior),
:class:`DeepFloydIFPrior` (DeepFloyd IF stage I, a 64 x 64 pixel prior) and
:class:`UnconditionalPixelPrior` (an unconditional pixel ``UNet2DModel``, as in a diffusers
``DDPMPipeline`` folder: the kind of prior the inverse-problem papers use) wrap the networks of a
pipeline folder saved by diffusers (``pipe.save_pretrained(folder)`` or a Hugging Face snapshot)
behind the :class:`~pyengine.diffusion.prior.Prior` interface that the SDS engines use. Nothing is
downloaded: every part is read with ``local_files_only=True``.

Folder layout (one subfolder per part, as diffusers writes it)::

    FOLDER/unet/          UNet2DConditionModel (config.json and weights); UNet2DModel for a pixel DDPM
    FOLDER/vae/           AutoencoderKL                      (Stable Diffusion only)
    FOLDER/text_encoder/  CLIPTextModel (SD) / T5EncoderModel (IF)
    FOLDER/tokenizer/     CLIPTokenizer (SD) / T5Tokenizer (IF)
    FOLDER/scheduler/     scheduler_config.json (any diffusers DDPM-family scheduler: PNDM, DDIM, ...)

Other subfolders (``safety_checker``, ``feature_extractor``, ``watermarker``) are ignored.

What is read from where:

- the noise schedule: the training betas of the scheduler config (``beta_schedule``,
  ``beta_start``/``beta_end``, ``trained_betas``, ``rescale_betas_zero_snr``), built by diffusers'
  ``DDPMScheduler`` from that config, whatever scheduler class the folder names; the prediction
  type from its ``prediction_type`` (``epsilon`` -> ``"eps"``, ``v_prediction`` -> ``"v"``: SD 2.x
  768 is a v model).
- text: as the diffusers pipelines encode prompts. SD: the CLIP tokenizer padded to its
  ``model_max_length`` (77) with truncation, the text encoder's last hidden states ``[B, 77, D]``
  (with its final layer norm; the attention mask is passed only where the text encoder's config
  sets ``use_attention_mask``). IF: prompts lower-cased and stripped (the pipeline's fallback when
  ``bs4``/``ftfy`` caption cleaning is not installed), the T5 tokenizer padded to 77 with
  truncation, T5's last hidden states with the attention mask ``[B, 77, 4096]``.

Tokenizers are loaded with ``transformers.AutoTokenizer`` (transformers 5.x: the ``tokenizers``
backed classes). A folder whose T5 tokenizer is only ``spiece.model`` (no ``tokenizer.json``) is
converted by transformers on load, which needs ``sentencepiece`` (or ``protobuf``) installed;
the ``ValueError`` raised on failure says which folder could not be read.

Variational Score Distillation (``lora_denoiser``) is not implemented for these priors: the
base class raises ``NotImplementedError``.

Example:
    >>> from pyengine.diffusion.prior import load_prior
    >>> prior = load_prior("sd:/models/stable-diffusion-2-1-base", device="cuda",
    ...                    dtype=torch.float16)                                     # doctest: +SKIP
    >>> text = prior.encode_text(["a DSLR photo of a corgi", ""])                   # doctest: +SKIP
    >>> z = prior.encode_images(rgb)            # [B, 4, 64, 64] from [B, 3, H, W]  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from pyengine.diffusion.prior import Prior
from pyengine.diffusion.schedule import NoiseSchedule

_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}

# diffusers' zero-terminal-SNR betas end with beta = 1 (abar = 0), which NoiseSchedule rejects;
# the last beta is clamped here, as diffusers clamps the cosine schedule's.
_MAX_BETA = 0.999


def _check_folder(cls_name: str, path: str, parts: tuple[str, ...]) -> None:
    """ValueError naming ``path`` and the first missing part when ``path`` is not such a pipeline."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        raise ValueError(f"{cls_name}: {path!r} is not a folder (a local diffusers pipeline folder is expected)")
    for part in parts:
        sub = os.path.join(path, part)
        if not os.path.isdir(sub):
            raise ValueError(f"{cls_name}: {path!r} is not a diffusers pipeline folder of this kind: it has no "
                             f"{part}/ subfolder (expected {', '.join(p + '/' for p in parts)})")
        config = {"scheduler": "scheduler_config.json", "tokenizer": None}.get(part, "config.json")
        if config is not None and not os.path.isfile(os.path.join(sub, config)):
            raise ValueError(f"{cls_name}: {path!r}: {part}/ has no {config}")
        if config is None and not os.listdir(sub):
            raise ValueError(f"{cls_name}: {path!r}: {part}/ is empty")


def _load(cls_name: str, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its failure re-raised as a ValueError that names the subfolder."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise ValueError(f"{cls_name}: could not load {what} from {args[0]!r}: {e}") from e


def _schedule(cls_name: str, path: str) -> tuple[NoiseSchedule, str]:
    """The training noise schedule and the prediction type (``"eps"`` / ``"v"``) of ``path/scheduler``."""
    from diffusers import DDPMScheduler

    sched = _load(cls_name, "the scheduler", DDPMScheduler.from_pretrained, os.path.join(path, "scheduler"),
                  local_files_only=True)
    kind = sched.config.get("prediction_type", "epsilon")
    if kind not in _PREDICTIONS:
        raise ValueError(f"{cls_name}: {path!r}: scheduler prediction_type {kind!r} is not supported "
                         f"(one of {tuple(_PREDICTIONS)})")
    betas = sched.betas.to(torch.float64).clamp(max=_MAX_BETA)
    return NoiseSchedule(betas), _PREDICTIONS[kind]


def _diffusers_kwargs(dtype: torch.dtype, variant: str | None) -> dict:
    """``from_pretrained`` arguments of a diffusers model (low-memory loading only where accelerate is there)."""
    from diffusers.utils import is_accelerate_available

    return dict(local_files_only=True, torch_dtype=dtype, variant=variant, low_cpu_mem_usage=is_accelerate_available())


def _freeze(*modules: torch.nn.Module) -> None:
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


def _check_rgb(name: str, rgb: torch.Tensor) -> None:
    if not isinstance(rgb, torch.Tensor) or rgb.dim() != 4 or rgb.shape[1] != 3:
        got = tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__
        raise ValueError(f"{name}: rgb must be [B, 3, H, W] RGB in [0, 1], got {got}")


def _resize(rgb: torch.Tensor, side: int) -> torch.Tensor:
    if rgb.shape[-2:] == (side, side):
        return rgb
    return F.interpolate(rgb, (side, side), mode="bilinear", align_corners=False, antialias=True)


def _sample_side(unet) -> int:
    """The side of the UNet's ``sample_size`` (an int or an ``(H, W)`` pair)."""
    size = unet.config.sample_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class _PixelImages:
    """``encode_images`` / ``decode`` of a pixel prior (IF stage I, a pixel DDPM): [0, 1] <-> [-1, 1]."""

    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, resolution, resolution]`` in [-1, 1] (differentiable)."""
        _check_rgb(self.name, rgb)
        if self.channels != 3:
            raise ValueError(f"{self.name}: encode_images makes RGB images but the prior denoises "
                             f"{self.channels}-channel ones")
        return _resize(rgb, self.resolution) * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, channels, h, w]`` in [-1, 1] -> [0, 1] (clamped)."""
        return ((x + 1) / 2).clamp(0, 1)


def _check_prompts(name: str, prompts) -> list[str]:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name}: prompts must be a list of strings, got {prompts!r}")
    return list(prompts)


class _DiffusersPrior(Prior):
    """What both diffusers priors share: a frozen UNet2DConditionModel called on the text hidden states."""

    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The UNet's output (its first ``channels`` channels) at ``x_t`` [B, C, h, w], steps ``t`` [B],
        hidden states ``text`` [B, L, D]."""
        dtype = self.unet.dtype
        out = self.unet(x_t.to(dtype), t.to(x_t.device), encoder_hidden_states=text.to(device=x_t.device, dtype=dtype),
                        return_dict=False)[0]
        return out[:, : self.channels]

    def _tokens(self, prompts: list[str], max_length: int):
        return self.tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                              return_tensors="pt")


class StableDiffusionPrior(_DiffusersPrior):
    """Stable Diffusion 1.x / 2.x as a latent prior (``latent=True``, ``channels=4``).

    ``encode_images`` resizes renders to ``resolution`` (the UNet's ``sample_size`` times the VAE's
    downscale factor: 512 for SD 1.x and 2.x-base, 768 for SD 2.x 768-v) and encodes them with the
    VAE (the mean of its latent distribution times ``vae.config.scaling_factor``), differentiably
    with respect to the renders; ``decode`` inverts it. Text embeddings are CLIP's last hidden
    states ``[B, 77, D]`` (D = 768 for SD 1.x, 1024 for SD 2.x). All weights are frozen.

    VSD (``lora_denoiser``) is not implemented: it raises ``NotImplementedError``.

    Args:
        unet, vae, text_encoder, tokenizer: the pipeline's parts.
        schedule: the training noise schedule; ``prediction``: ``"eps"`` or ``"v"``.
        resolution: the render side (None: from the UNet and VAE configs).
        name: shown in messages.

    Example:
        >>> prior = StableDiffusionPrior.from_pretrained("/models/sd-v1-5")       # doctest: +SKIP
        >>> z = prior.encode_images(torch.rand(1, 3, 256, 256))  # [1, 4, 64, 64] # doctest: +SKIP
    """

    latent = True
    channels = 4

    def __init__(self, unet, vae, text_encoder, tokenizer, schedule: NoiseSchedule, prediction: str = "eps",
                 resolution: int | None = None, name: str = "stable diffusion prior"):
        super().__init__()
        _freeze(unet, vae, text_encoder)
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.schedule, self.prediction, self.name = schedule, prediction, name
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        if resolution is None:
            resolution = _sample_side(unet) * self.vae_scale
        if not isinstance(resolution, int) or resolution <= 0 or resolution % self.vae_scale:
            raise ValueError(f"{name}: resolution must be a positive multiple of the VAE's factor {self.vae_scale}, "
                             f"got {resolution!r}")
        self.resolution = resolution
        self.max_length = int(min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings))
        self.eval()

    @classmethod
    def from_pretrained(cls, path: str, device="cpu", dtype: torch.dtype = torch.float32, resolution: int | None = None,
                        variant: str | None = None, pyengine_attention: bool = False) -> StableDiffusionPrior:
        """Loads ``path`` (a local diffusers Stable Diffusion pipeline folder; nothing is downloaded).

        Args:
            path: the folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``).
            device, dtype: where and in what precision the networks run.
            resolution: the render side (None: ``unet.config.sample_size`` x the VAE's factor).
            variant: the weights variant to read (e.g. ``"fp16"`` for ``*.fp16.safetensors``).
            pyengine_attention: run the UNet's attention layers through pyengine's processors
                (``pyengine.compat.diffusers``: self-attention by ``st_attention``, cross-attention
                by SDPA). Off by default.

        Raises:
            ValueError: ``path`` is not such a folder (the message names it and the missing part).
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        name = "StableDiffusionPrior"
        _check_folder(name, path, ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))
        schedule, prediction = _schedule(name, path)
        sub = lambda part: os.path.join(path, part)  # noqa: E731
        unet = _load(name, "the UNet", UNet2DConditionModel.from_pretrained, sub("unet"),
                     **_diffusers_kwargs(dtype, variant))
        vae = _load(name, "the VAE", AutoencoderKL.from_pretrained, sub("vae"), **_diffusers_kwargs(dtype, variant))
        text_encoder = _load(name, "the text encoder", CLIPTextModel.from_pretrained, sub("text_encoder"),
                             local_files_only=True, dtype=dtype, variant=variant)
        tokenizer = _load(name, "the tokenizer", AutoTokenizer.from_pretrained, sub("tokenizer"),
                          local_files_only=True)
        if unet.config.in_channels != cls.channels or vae.config.latent_channels != cls.channels:
            raise ValueError(f"{name}: {path!r}: expected a 4-channel latent UNet and VAE, got UNet in_channels "
                             f"{unet.config.in_channels} and VAE latent_channels {vae.config.latent_channels}")
        if pyengine_attention:
            from pyengine.compat.diffusers import set_pyengine_processors

            set_pyengine_processors(unet)
        prior = cls(unet, vae, text_encoder, tokenizer, schedule, prediction, resolution,
                    name=f"stable diffusion prior ({os.path.basename(os.path.normpath(path))})")
        return prior.to(device=device)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """CLIP's last hidden states ``[B, 77, D]`` of ``prompts`` (``""``: the unconditional prompt)."""
        prompts = _check_prompts(self.name, prompts)
        tok = self._tokens(prompts, self.max_length)
        dev = self.text_encoder.device
        mask = tok.attention_mask.to(dev) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        with torch.no_grad():
            return self.text_encoder(tok.input_ids.to(dev), attention_mask=mask)[0]

    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> latents ``[B, 4, resolution / 8, resolution / 8]`` (in ``rgb``'s
        dtype), differentiable with respect to ``rgb``."""
        _check_rgb(self.name, rgb)
        x = _resize(rgb, self.resolution) * 2 - 1
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        return (dist.mean * self.scaling_factor).to(rgb.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 4, h, w]`` -> RGB ``[B, 3, 8 h, 8 w]`` in [0, 1]."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{self.name}: latents must be [B, 4, h, w], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        img = self.vae.decode((x / self.scaling_factor).to(self.vae.dtype), return_dict=False)[0]
        return ((img + 1) / 2).clamp(0, 1).to(x.dtype)


class DeepFloydIFPrior(_PixelImages, _DiffusersPrior):
    """DeepFloyd IF stage I as a pixel prior (``latent=False``, ``channels=3``, ``resolution`` 64).

    The UNet predicts epsilon and a learned variance (6 output channels): the first 3 are the
    epsilon used here. ``encode_images`` resizes to ``resolution`` (the UNet's ``sample_size``)
    and maps [0, 1] to [-1, 1]; ``decode`` maps back and clamps. Text embeddings are T5's last
    hidden states ``[B, 77, 4096]``. All weights are frozen.

    VSD (``lora_denoiser``) is not implemented: it raises ``NotImplementedError``.

    Args:
        unet, text_encoder, tokenizer: the pipeline's parts.
        schedule: the training noise schedule; ``prediction``: ``"eps"`` or ``"v"``.
        name: shown in messages.

    Example:
        >>> prior = DeepFloydIFPrior.from_pretrained("/models/IF-I-XL-v1.0", device="cuda",
        ...                                          dtype=torch.float16)          # doctest: +SKIP
        >>> x = prior.encode_images(torch.rand(1, 3, 256, 256))  # [1, 3, 64, 64] # doctest: +SKIP
    """

    latent = False
    channels = 3
    max_length = 77  # IF's T5 was trained on 77 tokens (the IF pipeline's max_length)

    def __init__(self, unet, text_encoder, tokenizer, schedule: NoiseSchedule, prediction: str = "eps",
                 name: str = "deepfloyd IF prior"):
        super().__init__()
        _freeze(unet, text_encoder)
        self.unet, self.text_encoder, self.tokenizer = unet, text_encoder, tokenizer
        self.schedule, self.prediction, self.name = schedule, prediction, name
        self.resolution = _sample_side(unet)
        self.eval()

    @classmethod
    def from_pretrained(cls, path: str, device="cpu", dtype: torch.dtype = torch.float32,
                        variant: str | None = None) -> DeepFloydIFPrior:
        """Loads ``path`` (a local diffusers DeepFloyd IF stage I pipeline folder; nothing is downloaded).

        Args:
            path: the folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``).
            device, dtype: where and in what precision the networks run.
            variant: the weights variant to read (e.g. ``"fp16"``).

        Raises:
            ValueError: ``path`` is not such a folder (the message names it and the missing part).
        """
        from diffusers import UNet2DConditionModel
        from transformers import AutoTokenizer, T5EncoderModel

        name = "DeepFloydIFPrior"
        _check_folder(name, path, ("unet", "text_encoder", "tokenizer", "scheduler"))
        schedule, prediction = _schedule(name, path)
        sub = lambda part: os.path.join(path, part)  # noqa: E731
        unet = _load(name, "the UNet", UNet2DConditionModel.from_pretrained, sub("unet"),
                     **_diffusers_kwargs(dtype, variant))
        text_encoder = _load(name, "the text encoder", T5EncoderModel.from_pretrained, sub("text_encoder"),
                             local_files_only=True, dtype=dtype, variant=variant)
        tokenizer = _load(name, "the tokenizer", AutoTokenizer.from_pretrained, sub("tokenizer"),
                          local_files_only=True)
        if unet.config.in_channels != cls.channels or unet.config.out_channels not in (3, 6):
            raise ValueError(f"{name}: {path!r}: expected an RGB stage I UNet (3 input, 3 or 6 output channels), got "
                             f"{unet.config.in_channels} and {unet.config.out_channels}")
        prior = cls(unet, text_encoder, tokenizer, schedule, prediction,
                    name=f"deepfloyd IF prior ({os.path.basename(os.path.normpath(path))})")
        return prior.to(device=device)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """T5's last hidden states ``[B, 77, D]`` of ``prompts`` (lower-cased, stripped; ``""``: unconditional)."""
        prompts = [p.lower().strip() for p in _check_prompts(self.name, prompts)]
        tok = self._tokens(prompts, self.max_length)
        dev = self.text_encoder.device
        with torch.no_grad():
            return self.text_encoder(tok.input_ids.to(dev), attention_mask=tok.attention_mask.to(dev))[0]



class UnconditionalPixelPrior(_PixelImages, Prior):
    """An unconditional pixel-space diffusion model (a diffusers ``UNet2DModel``, e.g. a ``DDPMPipeline``
    folder: ``unet/`` and ``scheduler/``) as a :class:`~pyengine.diffusion.prior.Prior` with
    ``latent=False``: the kind of prior the inverse-problem solvers (``pyengine.inverse``) are written
    for. ``channels`` is the UNet's ``in_channels``, ``resolution`` its ``sample_size``; a UNet with
    twice as many output channels (a learned variance) gives its first half as the prediction.

    There is no text: ``encode_text`` takes only empty prompts and returns ``[B, 1]`` zeros, which
    the UNet ignores. ``encode_images`` resizes to ``resolution`` and maps [0, 1] to [-1, 1];
    ``decode`` maps back and clamps. All weights are frozen.

    Example:
        >>> prior = load_prior("ddpm:/models/ddpm-celebahq-256", device="cuda")     # doctest: +SKIP
        >>> from pyengine.inverse import make_operator, Problem, solve               # doctest: +SKIP
    """

    latent = False

    def __init__(self, unet, schedule: NoiseSchedule, prediction: str = "eps", name: str = "pixel DDPM prior"):
        super().__init__()
        _freeze(unet)
        self.unet, self.schedule, self.prediction, self.name = unet, schedule, prediction, name
        self.channels = int(unet.config.in_channels)
        self.resolution = _sample_side(unet)
        self.eval()

    @classmethod
    def from_pretrained(cls, path: str, device="cpu", dtype: torch.dtype = torch.float32,
                        variant: str | None = None) -> UnconditionalPixelPrior:
        """Loads ``path`` (a local folder with ``unet/`` holding a ``UNet2DModel`` and ``scheduler/``;
        nothing is downloaded).

        Raises:
            ValueError: ``path`` is not such a folder, or its UNet is class- or text-conditional, or
                its output channels are neither ``in_channels`` nor twice that.
        """
        from diffusers import UNet2DModel

        name = "UnconditionalPixelPrior"
        _check_folder(name, path, ("unet", "scheduler"))
        schedule, prediction = _schedule(name, path)
        unet = _load(name, "the UNet (a UNet2DModel)", UNet2DModel.from_pretrained, os.path.join(path, "unet"),
                     **_diffusers_kwargs(dtype, variant))
        cfg = unet.config
        if cfg.get("num_class_embeds") or cfg.get("class_embed_type"):
            raise ValueError(f"{name}: {path!r}: the UNet is class-conditional (num_class_embeds / class_embed_type); "
                             "only unconditional pixel UNets are supported")
        if cfg.out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
            raise ValueError(f"{name}: {path!r}: expected out_channels = in_channels ({cfg.in_channels}) or twice that "
                             f"(a learned variance), got {cfg.out_channels}")
        prior = cls(unet, schedule, prediction, name=f"pixel DDPM prior ({os.path.basename(os.path.normpath(path))})")
        return prior.to(device=device)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """``[B, 1]`` zeros: the prior is unconditional, so every prompt must be ``""``."""
        prompts = _check_prompts(self.name, prompts)
        if any(p.strip() for p in prompts):
            raise ValueError(f"{self.name}: the prior is unconditional; prompts must be empty, got {prompts!r}")
        return torch.zeros(len(prompts), 1, device=next(self.unet.parameters()).device)

    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        out = self.unet(x_t.to(self.unet.dtype), t.to(x_t.device), return_dict=False)[0]
        return out[:, : self.channels]
