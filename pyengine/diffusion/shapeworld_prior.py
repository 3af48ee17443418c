"""The bundled ShapeWorld text-to-image prior: network, weights file and :class:`~pyengine.diffusion.prior.Prior`.

``TextToImage`` is the denoiser ``pyengine train-prior images`` trains on ShapeWorld views
(``pyengine.data.shapeworld_images``: ``"a red cube, side view"``): an image U-Net
(``pyengine.nn.video.UNet3D`` with ``temporal=False`` on one-frame clips: residual blocks, spatial
attention through ``st_attention``) conditioned on the pooled embedding of a bag-of-words caption
encoder trained with it. Its weights file (safetensors, written by ``pyengine train-prior images
export``) carries the settings that rebuild it (``settings`` metadata) and the vocabulary, so
:meth:`ShapeWorldPrior.from_file` needs nothing else.
"""

from __future__ import annotations

import copy
import json
import math
import os

import torch

from pyengine.diffusion.prior import Prior
from pyengine.diffusion.schedule import NoiseSchedule
from pyengine.diffusion.text import BagOfWordsEncoder, Tokenizer

BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                       "image_prior.safetensors")


def _vocabulary() -> list[str]:
    from pyengine.data import shapeworld_images

    return shapeworld_images.vocabulary()


class TextToImage(torch.nn.Module):
    """An image denoiser conditioned on captions: ``forward(x [B, H, W, C], t [B], ids [B, L]) -> [B, H, W, C]``.

    ``encode(ids)`` gives the pooled caption context ``[B, text_dim]`` and ``denoise(x, t,
    context)`` runs the U-Net, which is what guided samplers and SDS call.

    Args:
        unet_kwargs: ``pyengine.nn.video.UNet3D`` arguments (``temporal`` and ``context_dim`` are set here).
        vocab_size: the tokenizer's size.
        text_dim: the pooled caption embedding's size.
        channels: image channels.
    """

    def __init__(self, unet_kwargs: dict, vocab_size: int, text_dim: int, channels: int = 3):
        super().__init__()
        from pyengine.nn.video import UNet3D

        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in unet_kwargs.items()}
        for bad in ("context_dim", "temporal", "in_channels", "out_channels"):
            if bad in kwargs:
                raise ValueError(f"TextToImage: {bad} is set by TextToImage, not by the U-Net kwargs")
        self.unet = UNet3D(in_channels=channels, out_channels=channels, context_dim=text_dim, temporal=False, **kwargs)
        self.text = BagOfWordsEncoder(vocab_size, text_dim)
        self.levels = self.unet.levels

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text(ids)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x[:, None], t, context)[:, 0]

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, t, self.text(ids))


def make_schedule(settings: dict) -> NoiseSchedule:
    if settings.get("schedule", "cosine") == "linear":
        return NoiseSchedule.linear(settings["timesteps"], settings["beta_start"], settings["beta_end"])
    return NoiseSchedule.from_name(settings.get("schedule", "cosine"), settings.get("timesteps", 1000))


def build_network(settings: dict) -> TextToImage:
    """The network of a weights file's / training config's settings (``model``: arch, text_dim, kwargs)."""
    model = settings["model"]
    if model.get("arch", "unet") != "unet":
        raise ValueError(f"ShapeWorld prior: unknown model.arch {model.get('arch')!r} (unet)")
    return TextToImage(dict(model.get("kwargs", {})), len(Tokenizer(_vocabulary())), int(model["text_dim"]))


class LoRALinear(torch.nn.Module):
    """``base(x) + (alpha / rank) * up(down(x))`` with ``base`` frozen and ``up`` zero at the start."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.down = torch.nn.Linear(base.in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.up.weight)
        self.scale = (alpha if alpha is not None else rank) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


def add_lora(module: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    """Replace every ``nn.Linear`` under ``module`` by a :class:`LoRALinear`; returns the LoRA parameters."""
    params = []
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            lora = LoRALinear(child, rank)
            setattr(module, name, lora)
            params += [lora.down.weight, lora.up.weight]
        else:
            params += add_lora(child, rank)
    return params


class LoRADenoiser(torch.nn.Module):
    """VSD's trainable copy of a :class:`TextToImage` network: LoRA on every linear layer of the
    U-Net (the rest frozen) and a camera embedding added to the caption context (zero at the start,
    so the copy starts as the prior). ``forward(x [B, C, H, W], t [B], context [B, text_dim],
    camera [B, camera_dim] or None) -> native output`` (the prior's ``prediction``)."""

    def __init__(self, net: TextToImage, rank: int = 4, camera_dim: int = 16):
        super().__init__()
        self.unet = copy.deepcopy(net.unet)
        for p in self.unet.parameters():
            p.requires_grad_(False)
        add_lora(self.unet, rank)
        dim = net.unet.context_dim
        self.camera_dim = camera_dim
        self.camera = torch.nn.Sequential(torch.nn.Linear(camera_dim, dim), torch.nn.SiLU(), torch.nn.Linear(dim, dim))
        torch.nn.init.zeros_(self.camera[2].weight)
        torch.nn.init.zeros_(self.camera[2].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                camera: torch.Tensor | None = None) -> torch.Tensor:
        if camera is not None:
            context = context + self.camera(camera.to(context.dtype))
        return self.unet(x.permute(0, 2, 3, 1)[:, None], t, context)[:, 0].permute(0, 3, 1, 2)


class ShapeWorldPrior(Prior):
    """The ShapeWorld text-to-image prior (pixel space, ``resolution`` x ``resolution``, [-1, 1]).

    Args:
        net: the trained :class:`TextToImage`.
        settings: its weights file's settings (``size``, schedule, ``prediction``, ``model``).

    Example:
        >>> prior = ShapeWorldPrior.from_file("pyengine/assets/image_prior.safetensors")  # doctest: +SKIP
        >>> emb = prior.encode_text(["a red cube, side view", ""])                      # doctest: +SKIP
    """

    latent = False
    channels = 3
    name = "shapeworld prior"

    def __init__(self, net: TextToImage, settings: dict):
        super().__init__()
        from pyengine.data import shapeworld_images

        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.settings = dict(settings)
        self.resolution = int(settings["size"])
        self.prediction = settings.get("prediction", "eps")
        self.schedule = make_schedule(settings)
        self.tokenizer = Tokenizer(_vocabulary())
        self.overhead_deg = shapeworld_images.OVERHEAD_DEG

    @classmethod
    def from_file(cls, path: str, device="cpu", dtype=torch.float32) -> ShapeWorldPrior:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if "settings" not in meta:
            raise ValueError(f"ShapeWorldPrior: {path} is not a weights file of `pyengine train-prior images export` "
                             "(no settings in its metadata)")
        if json.loads(meta.get("vocab", "null")) != _vocabulary():
            raise ValueError(f"ShapeWorldPrior: {path} was trained with another caption vocabulary than this "
                             "pyengine's")
        settings = json.loads(meta["settings"])
        net = build_network(settings)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()})
        prior = cls(net, settings)
        prior.step = int(meta.get("step", 0))
        return prior.to(device=device, dtype=dtype)

    def check_prompt(self, prompt: str) -> None:
        super().check_prompt(prompt)
        bad = self.tokenizer.unknown(prompt)
        if bad:
            raise ValueError(f"unknown word(s) {', '.join(repr(w) for w in bad)} in the prompt {prompt!r}: the "
                             f"ShapeWorld prior reads prompts such as \"a red cube\" made of the words "
                             f"{' '.join(self.tokenizer.vocab)}")

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            self.check_prompt(p)
        dev = next(self.net.parameters()).device
        return self.net.encode(self.tokenizer(list(prompts), dev))

    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be [B, 3, H, W] RGB in [0, 1], got {tuple(rgb.shape)}")
        if rgb.shape[-2:] != (self.resolution, self.resolution):
            rgb = torch.nn.functional.interpolate(rgb, (self.resolution, self.resolution), mode="bilinear",
                                                  align_corners=False, antialias=True)
        return rgb * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        out = self.net.denoise(x_t.permute(0, 2, 3, 1).to(dtype), t, text.to(dtype))
        return out.permute(0, 3, 1, 2)

    def lora_denoiser(self, rank: int = 4, camera_dim: int = 16) -> LoRADenoiser:
        return LoRADenoiser(self.net, rank, camera_dim).to(next(self.net.parameters()).device)
