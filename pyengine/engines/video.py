"""``pyengine video``: text-to-video diffusion on ShapeWorld clips, and diffusers text-to-video pipelines.

Data: ``pyengine.data.shapeworld_video`` clips ``[T=16, S, S, 3]`` in [-1, 1] of one shape of one
colour moving left, right, up or down, captioned ``"a red cube moving left"``; the training and
held-out splits come from fixed seeds (``data_seed``), and every (shape, colour, direction)
appears once in each run of ``len(shapes) * len(colors) * len(directions)`` clips.

Model: ``TextToVideo``, a 3D U-Net (``model.arch``: ``unet3d`` is ``pyengine.nn.video.UNet3D``,
built with ``model.kwargs``, its ``context_dim`` set to ``model.text_dim``) conditioned on the
pooled embedding of the caption by a bag-of-words text encoder
(``pyengine.diffusion.text``) trained jointly with it. ``caption_dropout`` of the training
captions are replaced by the empty caption, which makes the same network the unconditional model
of classifier-free guidance. The U-Net embeds each frame's index (``frame_embedding``): without
it the caption cannot set the direction of motion (see ``UNet3D``), and ``high_noise_fraction``
of each batch is trained at the noisiest steps, where that direction is decided. Diffusion with
the cosine schedule and v-prediction by default (Salimans and Ho 2022; Ho et al.'s Video
Diffusion Models), trained on the shared trainer (``pyengine.engines._trainer``: progress bar,
checkpoints and resume, EMA, DistributedDataParallel under ``torchrun``).

Sampling: DDIM (``sampler=ddim``) or DPM-Solver++(2M) (``sampler=dpm``, the default) with
classifier-free guidance (``guidance``, ``negative_prompt``), written as GIF and MP4 (MP4 needs
imageio's ffmpeg plugin, ``imageio-ffmpeg``; without it only GIFs are written, and it says so).

Jobs (one config for all; like ``pyengine points`` they find the trained run from the config):
  "a red cube moving left"  sample that prompt (the trained run of the config, else the bundled
                            prior ``pyengine/assets/video_prior.safetensors``)
  train             train (resumes a matching run), then sample ``prompts``
  sample            ``n_samples`` clips per prompt: GIF and MP4 per clip and a grid GIF; with
                    ``diffusers=FOLDER`` from a local diffusers text-to-video pipeline instead
  export            the run's EMA weights with their settings -> ``weights=PATH`` (safetensors)
  train-classifier  the evaluation classifier (a small 3D CNN: shape, colour and direction heads)
                    on real training clips; prints its held-out accuracy
  eval              generate ``eval_per_prompt`` clips for each of ``eval_prompts`` prompts and
                    report the classifier's shape / colour / direction / joint accuracy
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from pyengine.data import shapeworld_video as swv
from pyengine.diffusion import PREDICTIONS, NoiseSchedule, ddim_sample, training_loss
from pyengine.diffusion.dpm_solver import dpm_solver_sample
from pyengine.diffusion.guidance import ClassifierFreeGuidance
from pyengine.diffusion.text import BagOfWordsEncoder, Tokenizer, drop_captions
from pyengine.engines import _runs, _trainer
from pyengine.engines.point_metrics import format_table

JOB = "video"
BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "video_prior.safetensors")
SAMPLERS = ("dpm", "ddim")
FORMATS = ("gif", "mp4")


def _unet_defaults() -> dict:
    # frame_embedding: without the frame index the network cannot tie the direction word to the motion (see UNet3D)
    return {"model_channels": 16, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_levels": [2], "heads": 4,
            "frame_embedding": True}


@dataclass
class ModelConfig:
    arch: str = "unet3d"  # pyengine.nn.video.UNet3D
    text_dim: int = 64  # size of the pooled caption embedding (the U-Net's context_dim)
    kwargs: dict = field(default_factory=_unet_defaults)  # UNet3D's constructor kwargs (context_dim is text_dim)


@dataclass
class VideoConfig:
    # data (pyengine.data.shapeworld_video)
    size: int = swv.DEFAULT_SIZE  # frame width and height
    frames: int = swv.FRAMES
    shapes: list = field(default_factory=lambda: list(swv.SHAPES))
    colors: list = field(default_factory=lambda: list(swv.COLORS))
    directions: list = field(default_factory=lambda: list(swv.DIRECTIONS))
    train_size: int = 1400  # distinct training clips (10 of each of the 140 combinations)
    heldout_size: int = 280  # held-out clips (the classifier's test set)
    data_seed: int = 0
    caption_dropout: float = 0.1  # training captions replaced by "" (the unconditional model)
    # diffusion
    schedule: str = "cosine"
    timesteps: int = 1000
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02
    prediction: str = "v"  # "eps", "v" or "x0" (see pyengine.diffusion.training_loss)
    # share of each batch trained at the noisiest tenth of the steps (the rest uniform over all): only there
    # does the caption's direction decide the motion, so uniform steps (a tenth there) learn it slowly
    high_noise_fraction: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)
    # optimisation
    steps: int = 2400
    batch: int = 8  # clips per step (per process under torchrun)
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 100
    lr_decay: str = "none"  # "cosine": decay to lr * lr_final over the steps after the warm-up
    lr_final: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    log_every: int = 10
    # sampling
    prompt: str = ""  # one prompt (what `pyengine video "..."` sets)
    prompts: list = field(default_factory=list)  # empty: `prompt`, else one prompt per shape
    negative_prompt: str = ""  # the unconditional branch of guidance ("": the empty caption)
    sampler: str = "dpm"  # "dpm" (DPM-Solver++ 2M) or "ddim"
    sample_steps: int = 25
    guidance: float = 3.0  # classifier-free guidance scale (1: none)
    eta: float = 0.0  # ddim only
    clip_x0: float = 1.0  # clamp each predicted x0 to [-clip_x0, clip_x0] (0: no clamp)
    n_samples: int = 1  # clips per prompt
    sample_batch: int = 8  # clips per network call (twice that with guidance)
    fps: int = 8
    gif_scale: int = 4  # GIF/MP4 frames upscaled by this (nearest) for viewing
    formats: list = field(default_factory=lambda: list(FORMATS))
    # evaluation
    eval_prompts: int = 28  # prompt k: shapes[k % 5], colors[k % 7], directions[k % 4] (all distinct up to 140)
    eval_per_prompt: int = 4
    classifier: str = ""  # classifier weights; "": runs/video/classifier-<hash>/classifier.safetensors
    classifier_steps: int = 1500
    classifier_batch: int = 32
    classifier_lr: float = 2e-3
    classifier_width: int = 16
    classifier_noise: float = 0.1  # training clips get Gaussian noise of a std in [0, this] (robustness)
    seed: int = 0
    device: str = "cpu"
    resume: bool = True
    out: str = ""  # empty: runs/video/<arch>-<hash of the defining fields>
    weights: str = ""  # sample / eval from this exported file ("bundled": the packaged prior)
    diffusers: str = ""  # sample from a local diffusers text-to-video pipeline folder instead


#: Fields that do not change the trained prior: left out of the run's hash and its resume check.
RESUME_FREE = frozenset({"steps", "checkpoint_every", "log_every", "heldout_size", "prompt", "prompts",
                         "negative_prompt", "sampler", "sample_steps", "guidance", "eta", "clip_x0", "n_samples",
                         "sample_batch", "fps", "gif_scale", "formats", "eval_prompts", "eval_per_prompt", "classifier",
                         "classifier_steps", "classifier_batch", "classifier_lr", "classifier_width",
                         "classifier_noise", "device", "resume", "out", "weights", "diffusers"})

#: Settings a weights file carries: everything that shapes the network and the data it models.
_WEIGHTS_KEYS = ("size", "frames", "shapes", "colors", "directions", "schedule", "timesteps", "beta_start", "beta_end",
                 "prediction", "model")


def default_out(cfg: VideoConfig) -> str:
    return os.path.join("runs", JOB, f"{cfg.model.arch}-{_runs.config_hash(cfg, RESUME_FREE)}")


def _check(cfg: VideoConfig) -> None:
    for name, allowed in (("shapes", swv.SHAPES), ("colors", swv.COLORS), ("directions", swv.DIRECTIONS)):
        value = getattr(cfg, name)
        if not value or any(v not in allowed for v in value) or len(set(value)) != len(value):
            raise ValueError(f"video: {name} must be a non-empty list of distinct {allowed}, got {value}")
    levels = len(cfg.model.kwargs.get("channel_mult", _unet_defaults()["channel_mult"]))
    if cfg.size < 8 or cfg.size % (2 ** (levels - 1)):
        raise ValueError(f"video: size must be >= 8 and divisible by 2^(levels - 1) = {2 ** (levels - 1)}, "
                         f"got {cfg.size}")
    if cfg.frames < 2:
        raise ValueError(f"video: frames must be >= 2, got {cfg.frames}")
    if cfg.prediction not in PREDICTIONS:
        raise ValueError(f"video: prediction must be one of {PREDICTIONS}, got {cfg.prediction!r}")
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"video: sampler must be one of {SAMPLERS}, got {cfg.sampler!r}")
    if not 0.0 <= cfg.high_noise_fraction <= 1.0:
        raise ValueError(f"video: high_noise_fraction must be in [0, 1], got {cfg.high_noise_fraction}")
    if not 0.0 <= cfg.caption_dropout < 1.0:
        raise ValueError(f"video: caption_dropout must be in [0, 1), got {cfg.caption_dropout}")
    if cfg.clip_x0 < 0:
        raise ValueError(f"video: clip_x0 must be >= 0 (0: no clamp), got {cfg.clip_x0}")
    if cfg.model.text_dim < 1:
        raise ValueError(f"video: model.text_dim must be >= 1, got {cfg.model.text_dim}")
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad:
        raise ValueError(f"video: formats must be a list of {FORMATS}, got {cfg.formats}")
    for name in ("n_samples", "sample_batch", "sample_steps", "fps", "gif_scale", "eval_per_prompt", "batch"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"video: {name} must be >= 1, got {getattr(cfg, name)}")


# -- data and captions ---------------------------------------------------------------------------

def tokenizer() -> Tokenizer:
    """The caption tokenizer (ShapeWorld's fixed vocabulary)."""
    return Tokenizer(swv.vocabulary())


def captions_of(labels: torch.Tensor) -> list[str]:
    """Captions of [N, 3] (shape, colour, direction) labels."""
    return [swv.caption(swv.SHAPES[s], swv.COLORS[c], swv.DIRECTIONS[d]) for s, c, d in labels.tolist()]


def dataset(cfg: VideoConfig, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clips [n, T, S, S, 3] uint8, labels [n, 3])`` of the ``"train"`` or ``"heldout"`` split."""
    n = n if n is not None else (cfg.train_size if split == "train" else cfg.heldout_size)
    return swv.dataset(split, n, cfg.size, cfg.frames, cfg.shapes, cfg.colors, cfg.directions, cfg.data_seed)


def default_prompts(cfg: VideoConfig) -> list[str]:
    """``cfg.prompts``, else ``[cfg.prompt]``, else one prompt per shape (colours and directions cycling)."""
    if cfg.prompts:
        return [str(p) for p in cfg.prompts]
    if cfg.prompt:
        return [cfg.prompt]
    return [swv.caption(*c) for c in eval_combinations(cfg, len(cfg.shapes))]


def eval_combinations(cfg: VideoConfig, n: int) -> list[tuple[str, str, str]]:
    """Prompt ``k``: ``(shapes[k % ns], colors[k % nc], directions[k % nd])``; every attribute is
    balanced, and with the full lists (5, 7, 4: pairwise coprime) the first 140 are all distinct."""
    return [(cfg.shapes[k % len(cfg.shapes)], cfg.colors[k % len(cfg.colors)],
             cfg.directions[k % len(cfg.directions)]) for k in range(n)]


# -- the model ------------------------------------------------------------------------------------

def resolve_arch(name: str):
    """The U-Net class of ``model.arch``; ``unet3d`` is imported from ``pyengine.nn.video`` on first use."""
    if name == "unet3d":
        try:
            return importlib.import_module("pyengine.nn.video").UNet3D
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"video: model.arch=unet3d needs pyengine.nn.video.UNet3D, which is not available "
                             f"({exc})") from None
    raise ValueError(f"video: unknown model.arch {name!r} (unet3d)")


class TextToVideo(torch.nn.Module):
    """A video denoiser conditioned on captions: ``forward(x [B, T, H, W, C], t [B], ids [B, L]) -> [B, T, H, W, C]``.

    ``ids`` are caption token ids (:class:`~pyengine.diffusion.text.Tokenizer`); ``encode`` turns
    them into the pooled context ``[B, text_dim]`` and ``denoise(x, t, context)`` runs the U-Net,
    which is what the guided samplers call (the context is computed once per sample).

    Args:
        unet: ``unet(x, t, context) -> out`` with ``context_dim = text_dim``.
        vocab_size: the tokenizer's size.
        text_dim: the pooled caption embedding's size.
    """

    def __init__(self, unet: torch.nn.Module, vocab_size: int, text_dim: int):
        super().__init__()
        self.unet = unet
        self.text = BagOfWordsEncoder(vocab_size, text_dim)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text(ids)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, context)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, self.text(ids))


def build_model(cfg: VideoConfig) -> TextToVideo:
    cls = resolve_arch(cfg.model.arch)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.model.kwargs.items()}
    if "context_dim" in kwargs:
        raise ValueError("video: set the U-Net's context size with model.text_dim, not model.kwargs.context_dim")
    unet = cls(in_channels=3, out_channels=3, context_dim=cfg.model.text_dim, **kwargs)
    return TextToVideo(unet, len(tokenizer()), cfg.model.text_dim)


def make_schedule(cfg: VideoConfig) -> NoiseSchedule:
    if cfg.schedule == "linear":
        return NoiseSchedule.linear(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    return NoiseSchedule.from_name(cfg.schedule, cfg.timesteps)


# -- training ------------------------------------------------------------------------------------

def training_timesteps(n: int, T: int, high_noise_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """[n] int64 training steps: each uniform on [0, T), except that with probability
    ``high_noise_fraction`` it is uniform on the noisiest tenth, [T - ceil(T / 10), T).

    Near pure noise the frames of a clip are exchangeable and the caption alone sets where the
    object is in each frame, i.e. the direction of motion; lower down the noisy clip already shows
    it. Uniform steps spend a tenth of the batch there, and the direction is learned last.
    """
    dev = generator.device
    t = torch.randint(0, T, (n,), generator=generator, device=dev)
    high = torch.rand(n, generator=generator, device=dev) < high_noise_fraction
    return torch.where(high, torch.randint(T - math.ceil(T / 10), T, (n,), generator=generator, device=dev), t)


def make_trainer(cfg: VideoConfig, run_dir: str, info: _trainer.DistInfo | None = None) -> _trainer.Trainer:
    """A :class:`~pyengine.engines._trainer.Trainer` of ``cfg``'s model on its training split."""
    _check(cfg)
    info = info or _trainer.DistInfo(device=torch.device(cfg.device))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    schedule = make_schedule(cfg)
    clips, labels = dataset(cfg, "train")
    clips = clips.to(info.device)
    ids = tokenizer()(captions_of(labels)).to(info.device)

    def batch_fn(step, g):
        idx = torch.randint(0, len(clips), (cfg.batch,), generator=g, device=g.device).to(info.device)
        return swv.from_uint8(clips[idx]), drop_captions(ids[idx], cfg.caption_dropout, g)

    def loss_fn(net, batch, g):
        x, y = batch
        t = training_timesteps(len(x), schedule.T, cfg.high_noise_fraction, g) if cfg.high_noise_fraction else None
        return training_loss(net, schedule, x, y, generator=g, prediction=cfg.prediction, t=t)

    opts = _trainer.TrainOptions.from_config(cfg)
    return _trainer.Trainer(model, loss_fn, batch_fn, opts, JOB, cfg, os.path.join(run_dir, _runs.CHECKPOINT), info,
                            RESUME_FREE)


def find_run(cfg: VideoConfig) -> tuple[str | None, str]:
    """``(directory of the trained run matching cfg or None, why none matched)``."""
    out = cfg.out or default_out(cfg)
    path, reasons = _runs.find_run(JOB, out, cfg, RESUME_FREE)
    return path, (f"no trained run for this config at {out}" + (f" ({'; '.join(reasons)})" if reasons else ""))


def load_model(cfg: VideoConfig, run_dir: str) -> tuple[TextToVideo, dict]:
    """``(model with the run's EMA weights, in eval mode, checkpoint state)``."""
    _check(cfg)
    model = build_model(cfg)
    state = _trainer.load_weights(os.path.join(run_dir, _runs.CHECKPOINT), model)
    return model.to(cfg.device).eval(), state


def train(cfg: VideoConfig) -> dict:
    """Train (resuming a matching run), then sample the prompts. Works under ``torchrun``."""
    _check(cfg)
    info = _trainer.init_distributed(cfg.device)
    try:
        if info.is_main:
            run_dir, ckpt = _runs.choose_run_dir(JOB, cfg.out or default_out(cfg), cfg, cfg.resume, RESUME_FREE)
        run_dir, ckpt = _trainer.broadcast_object((run_dir, ckpt) if info.is_main else None, info)
        t0 = time.perf_counter()
        trainer = make_trainer(cfg, run_dir, info)
        if info.is_main:
            print(f"video: {cfg.train_size} training clips of {cfg.frames} x {cfg.size} x {cfg.size} made in "
                  f"{time.perf_counter() - t0:.0f} s; {sum(p.numel() for p in trainer.model.parameters())} parameters")
        if ckpt is not None and trainer.load() and info.is_main:
            print(f"video: resumed from {trainer.ckpt_path} at step {trainer.step}")
        res = trainer.fit(desc=f"video {cfg.model.arch}")
        result = {**res, "out": run_dir, "params": sum(p.numel() for p in trainer.model.parameters())}
        if info.is_main:
            print(f"video: {res['steps']} steps ({res['seconds']:.0f} s this run), loss {res['loss']:.4f}; "
                  f"wrote {run_dir}/")
            if cfg.n_samples:
                written = write_samples(trainer.sampling_model(), replace(cfg, device=str(info.device)), run_dir,
                                        default_prompts(cfg))
                result["files"] = written["files"]
        return result
    finally:
        _trainer.shutdown_distributed()


# -- weights files ------------------------------------------------------------------------------

def export_weights(cfg: VideoConfig) -> dict:
    """Writes the trained run's EMA weights to ``cfg.weights`` (safetensors; floating tensors in
    float16, cast back on loading), with the settings in ``_WEIGHTS_KEYS``, the vocabulary and the
    step in its metadata."""
    if not cfg.weights or cfg.weights == "bundled":
        raise ValueError("video export: give the file to write as weights=PATH (the bundled prior lives at "
                         f"{BUNDLED})")
    from safetensors.torch import save_file

    run_dir, why = find_run(cfg)
    if run_dir is None:
        raise ValueError(f"video export: {why}; run `pyengine video train` with the same settings first")
    model, state = load_model(cfg, run_dir)
    settings = {k: v for k, v in asdict(cfg).items() if k in _WEIGHTS_KEYS}
    tensors = {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(cfg.weights)), exist_ok=True)
    save_file(tensors, cfg.weights, metadata={"settings": json.dumps(settings), "vocab": json.dumps(tokenizer().vocab),
                                              "step": str(state["step"])})
    n = sum(t.numel() for t in tensors.values())
    print(f"video export: {n} parameters from step {state['step']} -> {cfg.weights}")
    return {"out": cfg.weights, "step": state["step"]}


def _weights_path(cfg: VideoConfig) -> str:
    return BUNDLED if cfg.weights == "bundled" else cfg.weights


def weights_config(cfg: VideoConfig) -> VideoConfig:
    """``cfg`` with the settings stored in its weights file."""
    from safetensors import safe_open

    path = _weights_path(cfg)
    if not os.path.exists(path):
        raise ValueError(f"video: weights file {path} does not exist")
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if "settings" not in meta:
        raise ValueError(f"video: {path} is not a weights file of `pyengine video export` (no settings)")
    if json.loads(meta.get("vocab", "null")) != tokenizer().vocab:
        raise ValueError(f"video: {path} was trained with another caption vocabulary than this pyengine's")
    settings = json.loads(meta["settings"])
    settings["model"] = ModelConfig(**settings["model"])
    return replace(cfg, **settings)


def load_weights_file(cfg: VideoConfig) -> tuple[TextToVideo, dict, str]:
    """``(model with the file's weights, in eval mode, {"step": ...}, output directory)``; ``cfg``
    must hold the file's settings (:func:`weights_config`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = _weights_path(cfg)
    _check(cfg)
    model = build_model(cfg)
    model.load_state_dict(load_file(path))
    with safe_open(path, "pt") as f:
        step = int((f.metadata() or {}).get("step", 0))
    out = cfg.out or os.path.join("runs", JOB, "weights-" + os.path.splitext(os.path.basename(path))[0])
    os.makedirs(out, exist_ok=True)
    return model.to(cfg.device).eval(), {"step": step}, out


def _source(cfg: VideoConfig) -> tuple[VideoConfig, TextToVideo, dict, str]:
    """The prior to sample from: ``weights`` when set; else the trained run of ``cfg``; else the
    bundled prior (said so); else a ValueError saying how to make one."""
    if not cfg.weights:
        run_dir, why = find_run(cfg)
        if run_dir is not None:
            model, state = load_model(cfg, run_dir)
            return cfg, model, state, run_dir
        if not os.path.exists(BUNDLED):
            raise ValueError(f"{why}, and no bundled prior at {BUNDLED}. Train one with\n"
                             "  pyengine video train --config configs/video_shapeworld.yaml\n"
                             "then sample from it with the same --config, or export it with\n"
                             "  pyengine video export --config configs/video_shapeworld.yaml weights=PATH\n"
                             "and sample with weights=PATH")
        print(f"video: sampling the bundled prior {BUNDLED} ({why})")
        cfg = replace(cfg, weights="bundled")
    cfg = weights_config(cfg)
    model, state, out = load_weights_file(cfg)
    return cfg, model, state, out


# -- sampling ----------------------------------------------------------------------------------------

def _check_prompts(prompts: list[str], cfg: VideoConfig) -> None:
    tok = tokenizer()
    for p in [*prompts, cfg.negative_prompt]:
        bad = tok.unknown(p)
        if bad:
            raise ValueError(f"unknown word(s) {', '.join(repr(w) for w in bad)} in the prompt {p!r}. Prompts "
                             f"describe a clip as in \"a red cube moving left\" with the words: "
                             f"{' '.join(tok.vocab)} (the commands are {', '.join(COMMANDS)})")


@torch.no_grad()
def generate(model: TextToVideo, cfg: VideoConfig, prompts: list[str], seed: int | None = None,
             progress: bool = False) -> torch.Tensor:
    """One clip per prompt: ``[len(prompts), T, S, S, 3]`` in [-1, 1].

    Clip ``k`` starts from noise seeded by ``seed + k`` (default ``cfg.seed``), so a clip does not
    depend on how the prompts are batched (``sample_batch``).
    """
    _check_prompts(prompts, cfg)
    tok, schedule, dev = tokenizer(), make_schedule(cfg), torch.device(cfg.device)
    seed = cfg.seed if seed is None else seed
    model = model.to(dev).eval()
    shape = (cfg.frames, cfg.size, cfg.size, 3)
    uncond = model.encode(tok([cfg.negative_prompt], dev))
    outs = []
    for start in range(0, len(prompts), cfg.sample_batch):
        chunk = prompts[start:start + cfg.sample_batch]
        x_T = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + start + k))
                           for k in range(len(chunk))]).to(dev)
        guided = ClassifierFreeGuidance(model.denoise, model.encode(tok(chunk, dev)), uncond, cfg.guidance)
        g = torch.Generator(device=dev).manual_seed(seed + start)
        kw = dict(generator=g, device=dev, x_T=x_T, prediction=cfg.prediction, clip_x0=cfg.clip_x0 or None,
                  progress=progress)
        if cfg.sampler == "dpm":
            outs.append(dpm_solver_sample(guided, schedule, x_T.shape, steps=min(cfg.sample_steps, cfg.timesteps),
                                          **kw))
        else:
            outs.append(ddim_sample(guided, schedule, x_T.shape, steps=min(cfg.sample_steps, cfg.timesteps),
                                    eta=cfg.eta, **kw))
    return torch.cat(outs).clamp(-1, 1).cpu()


def slug(text: str) -> str:
    """A file-name stem for a prompt: ``"a red cube moving left"`` -> ``"a_red_cube_moving_left"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unconditional"


def mp4_available() -> bool:
    """Whether imageio can write MP4 here (its ffmpeg plugin, ``imageio-ffmpeg``)."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def _frames_uint8(clip: torch.Tensor, scale: int) -> np.ndarray:
    """[T, S, S, 3] in [-1, 1] -> [T, S * scale, S * scale, 3] uint8 (nearest upscaling)."""
    f = swv.to_uint8(clip).numpy()
    return f.repeat(scale, 1).repeat(scale, 2) if scale > 1 else f


def write_video(path_stem: str, frames: np.ndarray, fps: int = 8, formats=FORMATS) -> list[str]:
    """Write ``frames`` [T, H, W, 3] uint8 as ``<path_stem>.gif`` and/or ``.mp4``; returns the paths.

    MP4 is written only where imageio's ffmpeg plugin is importable; otherwise it is skipped
    (:func:`mp4_available` says so beforehand).
    """
    import imageio.v3 as iio

    written = []
    if "gif" in formats:
        iio.imwrite(path_stem + ".gif", frames, duration=1000.0 / fps, loop=0)
        written.append(path_stem + ".gif")
    if "mp4" in formats and mp4_available():
        # imageio's ffmpeg writer: libx264, yuv420p; macro_block_size=1 keeps the size (it would pad to 16)
        iio.imwrite(path_stem + ".mp4", frames, fps=fps, codec="libx264", macro_block_size=1)
        written.append(path_stem + ".mp4")
    return written


def _grid(clips: np.ndarray, rows: int, cols: int, gap: int = 2) -> np.ndarray:
    """[rows * cols, T, h, w, 3] uint8 -> [T, rows * (h + gap) - gap, cols * (w + gap) - gap, 3] (grey gaps)."""
    n, T, h, w, _ = clips.shape
    out = np.full((T, rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 128, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        out[:, r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = clips[k]
    return out


def write_samples(model: TextToVideo, cfg: VideoConfig, out_dir: str, prompts: list[str],
                  progress: bool = True) -> dict:
    """``n_samples`` clips per prompt -> ``<out_dir>/samples/<prompt>_<k>.gif`` (and ``.mp4``), and
    ``grid.gif`` (a row per prompt) when there is more than one clip."""
    _check_prompts(prompts, cfg)
    if "mp4" in cfg.formats and not mp4_available():
        print("video: imageio's ffmpeg plugin (imageio-ffmpeg) is not installed; writing GIF only")
    expanded = [p for p in prompts for _ in range(cfg.n_samples)]
    t0 = time.perf_counter()
    clips = generate(model, cfg, expanded, progress=progress)
    seconds = time.perf_counter() - t0
    out = os.path.join(out_dir, "samples")
    os.makedirs(out, exist_ok=True)
    frames = np.stack([_frames_uint8(c, cfg.gif_scale) for c in clips])
    files = []
    for i, p in enumerate(expanded):
        files += write_video(os.path.join(out, f"{slug(p)}_{i % cfg.n_samples}"), frames[i], cfg.fps, cfg.formats)
    if len(expanded) > 1 and "gif" in cfg.formats:
        files += write_video(os.path.join(out, "grid"), _grid(frames, len(prompts), cfg.n_samples), cfg.fps, ("gif",))
    steps = min(cfg.sample_steps, cfg.timesteps)
    print(f"video: {len(expanded)} clip(s) of {cfg.frames} x {cfg.size} x {cfg.size} in {seconds:.1f} s "
          f"({cfg.sampler}, {steps} steps, guidance {cfg.guidance}); wrote {', '.join(files)}")
    return {"clips": clips, "files": files, "dir": out, "seconds": seconds}


def sample(cfg: VideoConfig) -> dict:
    if cfg.diffusers:
        return sample_diffusers(cfg)
    prompts = default_prompts(cfg)
    _check_prompts(prompts, cfg)
    cfg, model, state, out_dir = _source(cfg)
    res = write_samples(model, cfg, out_dir, prompts)
    return {"files": res["files"], "out": out_dir, "step": state["step"]}


# -- the evaluation classifier --------------------------------------------------------------------

class VideoClassifier(torch.nn.Module):
    """A small 3D CNN that names a clip's shape, colour and motion direction.

    ``forward(x [B, T, H, W, 3] in [-1, 1]) -> (shape logits [B, 5], colour [B, 7], direction [B, 4])``
    over the full ``SHAPES``, ``COLORS``, ``DIRECTIONS``. Four 3x3x3 convolutions of widths w, 2w,
    4w, 4w (the first strided in space, the others in space and time), GroupNorm and SiLU, a global
    average, and three linear heads: 0.18 M parameters at ``w = 16``, and 16 M multiply-adds
    per 16 x 32 x 32 clip. Trained by ``pyengine video train-classifier`` (1500 steps, mirrored and
    reversed clips, a little noise) it named the shape, colour and direction of the 280 held-out
    real clips with accuracy 0.979, 1.0 and 1.0 at 24 x 24 (0.986, 1.0, 1.0 at 32 x 32); its
    errors are cubes and cylinders seen face on.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        layers, c_in = [], 3
        for c_out, stride in ((w, (1, 2, 2)), (2 * w, 2), (4 * w, 2), (4 * w, 1)):
            layers += [torch.nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1), torch.nn.GroupNorm(4, c_out),
                       torch.nn.SiLU()]
            c_in = c_out
        self.features = torch.nn.Sequential(*layers)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(c_in, len(n)) for n in (swv.SHAPES, swv.COLORS,
                                                                                   swv.DIRECTIONS)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.dim() != 5 or x.shape[-1] != 3:
            raise ValueError(f"VideoClassifier: x must be [B, T, H, W, 3], got {tuple(x.shape)}")
        h = self.features(x.permute(0, 4, 1, 2, 3)).mean((2, 3, 4))
        return tuple(head(h) for head in self.heads)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """[B, 3] predicted (shape, colour, direction) indices; ``x`` float in [-1, 1] or uint8."""
        self.eval()
        dev = next(self.parameters()).device
        out = []
        for s in range(0, len(x), batch):
            xb = x[s:s + batch].to(dev)
            xb = swv.from_uint8(xb) if xb.dtype == torch.uint8 else xb.float()
            out.append(torch.stack([logits.argmax(-1) for logits in self(xb)], -1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 3, dtype=torch.long)


def _classifier_settings(cfg: VideoConfig) -> dict:
    keys = ("size", "frames", "shapes", "colors", "directions", "train_size", "data_seed", "classifier_batch",
            "classifier_lr", "classifier_width", "classifier_noise", "seed")
    return {k: v for k, v in asdict(cfg).items() if k in keys}


def classifier_path(cfg: VideoConfig) -> str:
    """``cfg.classifier``, else ``runs/video/classifier-<hash of its data and settings>/classifier.safetensors``."""
    if cfg.classifier:
        return cfg.classifier
    blob = json.dumps(_classifier_settings(cfg), sort_keys=True)
    return os.path.join("runs", JOB, f"classifier-{hashlib.sha256(blob.encode()).hexdigest()[:8]}",
                        "classifier.safetensors")


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-attribute and joint accuracy of [N, 3] predictions against [N, 3] labels."""
    hit = pred == labels
    return {"shape": float(hit[:, 0].float().mean()), "color": float(hit[:, 1].float().mean()),
            "direction": float(hit[:, 2].float().mean()), "joint": float(hit.all(1).float().mean()), "n": len(labels)}


def augment(x: torch.Tensor, labels: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips [B, T, H, W, 3] each mirrored left-right and/or played backwards (each with
    probability 1/2), with their [B, 3] labels mapped: shape and colour stay, a mirror swaps left
    and right, playing backwards swaps left and right, and up and down."""
    mirror = torch.tensor([swv.DIRECTIONS.index(d) for d in ("right", "left", "up", "down")], device=x.device)
    backwards = torch.tensor([swv.DIRECTIONS.index(d) for d in ("right", "left", "down", "up")], device=x.device)
    flip, rev = (torch.rand(2, len(x), generator=g, device=g.device) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None, None], x.flip(3), x)
    x = torch.where(rev[:, None, None, None, None], x.flip(1), x)
    y = labels.clone()
    y[:, 2] = torch.where(flip, mirror[y[:, 2]], y[:, 2])
    y[:, 2] = torch.where(rev, backwards[y[:, 2]], y[:, 2])
    return x, y


def train_classifier(cfg: VideoConfig) -> dict:
    """Train the evaluation classifier on real training clips (resumes), write its weights to
    :func:`classifier_path` with its settings and held-out accuracy; returns them."""
    from safetensors.torch import save_file

    _check(cfg)
    path = classifier_path(cfg)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = VideoClassifier(cfg.classifier_width)
    clips, labels = dataset(cfg, "train")
    clips, labels = clips.to(dev), labels.to(dev)

    def batch_fn(step, g):
        idx = torch.randint(0, len(clips), (cfg.classifier_batch,), generator=g, device=g.device).to(dev)
        x, y = augment(swv.from_uint8(clips[idx]), labels[idx], g)
        std = cfg.classifier_noise * torch.rand(len(idx), 1, 1, 1, 1, generator=g, device=g.device).to(dev)
        return x + std * torch.randn(x.shape, generator=g, device=g.device).to(dev), y

    def loss_fn(net, batch, g):
        x, y = batch
        return sum(torch.nn.functional.cross_entropy(logits, y[:, k]) for k, logits in enumerate(net(x)))

    settings = _classifier_settings(cfg)
    opts = _trainer.TrainOptions(steps=cfg.classifier_steps, lr=cfg.classifier_lr, warmup_steps=20, ema_decay=0.0,
                                 checkpoint_every=200, seed=cfg.seed)
    ckpt = os.path.splitext(path)[0] + ".checkpoint.safetensors"
    tr = _trainer.Trainer(model, loss_fn, batch_fn, opts, "video-classifier", settings, ckpt,
                          _trainer.DistInfo(device=dev))
    if tr.load():
        print(f"video train-classifier: resumed from {tr.ckpt_path} at step {tr.step}")
    res = tr.fit(desc="video classifier")
    held, held_labels = dataset(cfg, "heldout")
    acc = accuracy(tr.model.predict(held), held_labels)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tr.model.state_dict().items()}
    save_file(tensors, path, metadata={"settings": json.dumps(settings), "heldout": json.dumps(acc),
                                       "step": str(tr.step)})
    print(f"video train-classifier: {tr.step} steps ({res['seconds']:.0f} s this run), loss {res['loss']:.4f}; "
          f"held-out accuracy on {acc['n']} real clips: shape {acc['shape']:.3f}, colour {acc['color']:.3f}, "
          f"direction {acc['direction']:.3f}, joint {acc['joint']:.3f}; wrote {path}")
    return {"path": path, "heldout": acc, "steps": tr.step}


def load_classifier(cfg: VideoConfig, train_if_missing: bool = True) -> tuple[VideoClassifier, dict]:
    """``(classifier in eval mode, its metadata: settings and held-out accuracy)``; trains it first
    when its file is missing and ``cfg.classifier`` was not given explicitly."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = classifier_path(cfg)
    if not os.path.exists(path):
        if cfg.classifier or not train_if_missing:
            raise ValueError(f"video: classifier {path} does not exist; make it with `pyengine video "
                             f"train-classifier classifier={path}` (and the prior's data settings)")
        print(f"video: no evaluation classifier at {path} yet; training it on real clips first")
        train_classifier(cfg)
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if "settings" not in meta:
        raise ValueError(f"video: {path} is not a classifier written by `pyengine video train-classifier`")
    settings = json.loads(meta["settings"])
    for k in ("size", "frames"):
        if settings[k] != getattr(cfg, k):
            raise ValueError(f"video: classifier {path} was trained on {k}={settings[k]}, the prior makes "
                             f"{k}={getattr(cfg, k)}")
    model = VideoClassifier(settings["classifier_width"])
    model.load_state_dict(load_file(path))
    return model.to(cfg.device).eval(), {"settings": settings, "heldout": json.loads(meta["heldout"]), "path": path}


def evaluate(cfg: VideoConfig) -> dict:
    """Generate ``eval_per_prompt`` clips for each of ``eval_prompts`` prompts and score them with
    the classifier; prints a table and writes ``eval.json`` next to the prior's samples."""
    cfg, model, state, out_dir = _source(cfg)
    clf, meta = load_classifier(cfg)
    combos = eval_combinations(cfg, cfg.eval_prompts)
    prompts = [swv.caption(*c) for c in combos for _ in range(cfg.eval_per_prompt)]
    labels = torch.tensor([[swv.SHAPES.index(s), swv.COLORS.index(c), swv.DIRECTIONS.index(d)]
                           for s, c, d in combos for _ in range(cfg.eval_per_prompt)])
    from tqdm import tqdm

    t0 = time.perf_counter()
    clips = []
    for s in tqdm(range(0, len(prompts), cfg.sample_batch), desc="video eval", unit="batch"):
        clips.append(generate(model, cfg, prompts[s:s + cfg.sample_batch], seed=cfg.seed + 10_000 + s))
    clips = torch.cat(clips)
    seconds = time.perf_counter() - t0
    pred = clf.predict(clips)
    gen = accuracy(pred, labels)
    real = meta["heldout"]
    rows = [{"clips": "generated", **gen}, {"clips": "real (held-out)", **real}]
    table = format_table(rows, [("clips", "clips", "s"), ("n", "n", "d"), ("shape", "shape", ".3f"),
                                ("color", "colour", ".3f"), ("direction", "direction", ".3f"),
                                ("joint", "joint", ".3f")])
    per_prompt = []
    for k, combo in enumerate(combos):
        sl = slice(k * cfg.eval_per_prompt, (k + 1) * cfg.eval_per_prompt)
        per_prompt.append({"prompt": swv.caption(*combo), **accuracy(pred[sl], labels[sl])})
    sampler = f"{cfg.sampler} {min(cfg.sample_steps, cfg.timesteps)} steps, guidance {cfg.guidance}"
    print(f"video eval: {out_dir} at step {state['step']}: {len(combos)} prompts x {cfg.eval_per_prompt} clips "
          f"({sampler}; {seconds:.0f} s), judged by the classifier {meta['path']}\n{table}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump({"step": state["step"], "config": asdict(cfg), "generated": gen, "real_heldout": real,
                   "classifier": meta["path"], "per_prompt": per_prompt, "seconds": seconds}, f, indent=1)
    os.makedirs(os.path.join(out_dir, "eval"), exist_ok=True)
    frames = np.stack([_frames_uint8(c, 2) for c in clips])
    write_video(os.path.join(out_dir, "eval", "grid"), _grid(frames, len(combos), cfg.eval_per_prompt), cfg.fps,
                ("gif",))
    return {"generated": gen, "real": real, "rows": rows, "table": table, "per_prompt": per_prompt, "out": out_dir}


# -- diffusers text-to-video pipelines ---------------------------------------------------------------

def load_diffusers_pipeline(path: str, device: str = "cpu", torch_dtype=None, sampler: str = "dpm",
                            processors: bool = True):
    """A diffusers ``TextToVideoSDPipeline`` (ModelScope / Zeroscope layout) from a local folder,
    with DPM-Solver++ or DDIM as its scheduler and pyengine's attention processors switched in.

    Args:
        path: the pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
            ``tokenizer/``, ``scheduler/``); nothing is downloaded (``local_files_only=True``).
        device, torch_dtype: where and in which dtype to load it.
        sampler: ``"dpm"`` (``DPMSolverMultistepScheduler``, DPM-Solver++ 2M) or ``"ddim"``, built
            from the pipeline's own scheduler config.
        processors: switch the U-Net's attention to ``pyengine.compat.diffusers`` processors; where
            that module is missing the pipeline keeps diffusers' processors (and says so).

    Returns:
        ``(pipeline, info)``, ``info = {"processors": number switched or 0, "scheduler": name}``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"video: sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not path or not os.path.isdir(path):
        raise ValueError(f"video: diffusers={path!r} is not a folder; give a local text-to-video pipeline folder "
                         "(ModelScope / Zeroscope layout: model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                         "scheduler/)")
    index = os.path.join(path, "model_index.json")
    if not os.path.exists(index):
        raise ValueError(f"video: {path} has no model_index.json, so it is not a diffusers pipeline folder")
    with open(index) as f:
        cls_name = json.load(f).get("_class_name")
    if cls_name != "TextToVideoSDPipeline":
        raise ValueError(f"video: {path} holds a {cls_name!r} pipeline; diffusers=... takes a TextToVideoSDPipeline "
                         "(ModelScope text-to-video, Zeroscope)")
    try:
        import diffusers
        from diffusers.utils import is_transformers_available
    except ImportError as exc:
        raise ValueError(f"video: diffusers=... needs the diffusers package ({exc})") from None
    if not is_transformers_available():
        raise ValueError("video: diffusers text-to-video pipelines need the transformers package (their text "
                         "encoder is a CLIPTextModel); install it with `pip install transformers`")
    pipe = diffusers.TextToVideoSDPipeline.from_pretrained(path, local_files_only=True, torch_dtype=torch_dtype)
    info = configure_pipeline(pipe, sampler, processors)
    return pipe.to(device), info


def configure_pipeline(pipe, sampler: str = "dpm", processors: bool = True) -> dict:
    """Give a loaded diffusers pipeline (anything with ``.scheduler`` and ``.unet``) DPM-Solver++
    (2M) or DDIM built from its own scheduler config, and pyengine's attention processors.

    Returns ``{"processors": number of attention modules switched (0 where
    ``pyengine.compat.diffusers`` is missing, which is printed), "scheduler": class name}``.
    """
    import diffusers

    if sampler not in SAMPLERS:
        raise ValueError(f"video: sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "dpm":
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
    else:
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    switched = 0
    if processors:
        try:
            from pyengine.compat.diffusers import set_pyengine_processors
        except ImportError as exc:
            print(f"video: pyengine.compat.diffusers is not available ({exc}); keeping diffusers' attention processors")
        else:
            switched = int(set_pyengine_processors(pipe.unet) or 0)
    return {"processors": switched, "scheduler": type(pipe.scheduler).__name__}


def sample_diffusers(cfg: VideoConfig) -> dict:
    """``n_samples`` clips per prompt from the pipeline in ``cfg.diffusers`` (``size``, ``frames``,
    ``sample_steps``, ``guidance``, ``negative_prompt``, ``seed``), written as :func:`write_samples` does."""
    if not cfg.prompts and not cfg.prompt:
        raise ValueError("video sample diffusers=...: give prompt=\"...\" or prompts=[...]")
    prompts = default_prompts(cfg)
    pipe, info = load_diffusers_pipeline(cfg.diffusers, cfg.device, sampler=cfg.sampler)
    out = cfg.out or os.path.join("runs", JOB, "diffusers-" + os.path.basename(os.path.normpath(cfg.diffusers)))
    os.makedirs(os.path.join(out, "samples"), exist_ok=True)
    files = []
    for i, p in enumerate(prompts):
        for k in range(cfg.n_samples):
            g = torch.Generator(device="cpu").manual_seed(cfg.seed + i * cfg.n_samples + k)
            res = pipe(p, negative_prompt=cfg.negative_prompt or None, num_frames=cfg.frames, height=cfg.size,
                       width=cfg.size, num_inference_steps=cfg.sample_steps, guidance_scale=cfg.guidance,
                       generator=g, output_type="np")
            frames = np.asarray(res.frames[0])  # [T, H, W, 3] in [0, 1]
            frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
            files += write_video(os.path.join(out, "samples", f"{slug(p)}_{k}"), frames, cfg.fps, cfg.formats)
    print(f"video: sampled {cfg.diffusers} ({info['scheduler']}, pyengine processors: {info['processors']}); "
          f"wrote {', '.join(files)}")
    return {"files": files, "out": out, **info}


# -- jobs ----------------------------------------------------------------------------------------------

COMMANDS = {"train": train, "sample": sample, "eval": evaluate, "export": export_weights,
            "train-classifier": train_classifier}


def run(cfg: VideoConfig, command: str = "sample") -> dict:
    """Run a job; a ``command`` that is not a job name is a prompt to sample (``pyengine video "a red cube"``)."""
    if command in COMMANDS:
        return COMMANDS[command](cfg)
    if not isinstance(command, str) or not command.strip():
        raise ValueError(f"video: give a command ({', '.join(COMMANDS)}) or a prompt in quotes")
    return sample(replace(cfg, prompt=command, prompts=[]))
