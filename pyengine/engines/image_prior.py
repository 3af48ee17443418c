"""``pyengine train-prior images``: the ShapeWorld text-to-image prior of the SDS engine, and its judge.

Data: ``pyengine.data.shapeworld_images`` views ``[S, S, 3]`` in [-1, 1] of one shape of one
colour from a random camera around it (the SDS engine's camera distribution), captioned
``"a red cube, side view"``; training and held-out splits from fixed seeds (``data_seed``).

Model: ``pyengine.diffusion.shapeworld_prior.TextToImage`` (an image U-Net: ``UNet3D`` without
temporal layers, spatial attention on ``st_attention``) conditioned on a bag-of-words caption
embedding trained with it; ``caption_dropout`` of the captions are replaced by ``""`` (the
unconditional model of classifier-free guidance and of SDS). Cosine schedule, v-prediction,
trained on the shared trainer (progress bar, checkpoints and resume, EMA, DDP under ``torchrun``).

Jobs (``pyengine train-prior images [COMMAND] [k=v ...]``; one config for all, the trained run
is found from it):
  train             train (resumes a matching run), then write a sample grid
  sample            ``n_samples`` images per prompt -> a PNG grid (the trained run, or ``weights=``)
  export            the run's EMA weights with their settings -> ``weights=PATH`` (safetensors)
  train-classifier  the evaluation classifier (shape and colour of a view) on real views; the SDS
                    engine's R-precision judge
  eval              generate images for ``eval_prompts`` prompts and report the classifier's
                    shape / colour / joint accuracy on them (and on real held-out views)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from pyengine.data import shapeworld_images as swi
from pyengine.diffusion import PREDICTIONS, ddim_sample, training_loss
from pyengine.diffusion.dpm_solver import dpm_solver_sample
from pyengine.diffusion.guidance import ClassifierFreeGuidance
from pyengine.diffusion.shapeworld_prior import BUNDLED, ShapeWorldPrior, build_network, make_schedule
from pyengine.diffusion.text import Tokenizer, drop_captions
from pyengine.engines import _runs, _trainer
from pyengine.engines.point_metrics import format_table
from pyengine.render.mesh import image_grid

JOB = "image-prior"
SAMPLERS = ("dpm", "ddim")
CLASSIFIER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                          "image_classifier.safetensors")


def _unet_defaults() -> dict:
    return {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_levels": [2], "heads": 4}


@dataclass
class ModelConfig:
    arch: str = "unet"  # pyengine.diffusion.shapeworld_prior.TextToImage (UNet3D, temporal=False)
    text_dim: int = 64
    kwargs: dict = field(default_factory=_unet_defaults)


@dataclass
class ImagePriorConfig:
    # data (pyengine.data.shapeworld_images)
    size: int = swi.DEFAULT_SIZE
    shapes: list = field(default_factory=lambda: list(swi.SHAPES))
    colors: list = field(default_factory=lambda: list(swi.COLORS))
    train_size: int = 2800  # 80 views of each of the 35 (shape, colour) pairs
    heldout_size: int = 350
    data_seed: int = 0
    caption_dropout: float = 0.1
    view_dropout: float = 0.2  # training captions without their ", side view" part
    # diffusion
    schedule: str = "cosine"
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "v"
    model: ModelConfig = field(default_factory=ModelConfig)
    # optimisation
    steps: int = 6000
    batch: int = 16
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
    prompts: list = field(default_factory=list)  # empty: one per shape, colours cycling
    negative_prompt: str = ""
    sampler: str = "dpm"
    sample_steps: int = 25
    guidance: float = 3.0
    clip_x0: float = 1.0
    n_samples: int = 4
    sample_batch: int = 32
    # evaluation
    eval_prompts: int = 35  # prompt k: shapes[k % 5], colors[k % 7]: all 35 pairs
    eval_per_prompt: int = 4
    classifier: str = ""  # "": runs/image-prior/classifier-<hash>/classifier.safetensors
    classifier_steps: int = 1500
    classifier_batch: int = 64
    classifier_lr: float = 2e-3
    classifier_width: int = 16
    classifier_noise: float = 0.1
    classifier_blur: float = 0.5  # fraction of training views blurred (renders of a NeRF are softer)
    seed: int = 0
    device: str = "cpu"
    resume: bool = True
    out: str = ""
    weights: str = ""  # sample / eval this exported file ("bundled": pyengine/assets/image_prior.safetensors)


RESUME_FREE = frozenset({"steps", "checkpoint_every", "log_every", "heldout_size", "prompts", "negative_prompt",
                         "sampler", "sample_steps", "guidance", "clip_x0", "n_samples", "sample_batch", "eval_prompts",
                         "eval_per_prompt", "classifier", "classifier_steps", "classifier_batch", "classifier_lr",
                         "classifier_width", "classifier_noise", "classifier_blur", "device", "resume", "out",
                         "weights"})
_WEIGHTS_KEYS = ("size", "shapes", "colors", "schedule", "timesteps", "beta_start", "beta_end", "prediction", "model")


def default_out(cfg: ImagePriorConfig) -> str:
    return os.path.join("runs", JOB, f"{cfg.model.arch}-{_runs.config_hash(cfg, RESUME_FREE)}")


def _check(cfg: ImagePriorConfig) -> None:
    for name, allowed in (("shapes", swi.SHAPES), ("colors", swi.COLORS)):
        value = getattr(cfg, name)
        if not value or any(v not in allowed for v in value) or len(set(value)) != len(value):
            raise ValueError(f"train-prior images: {name} must be a non-empty list of distinct {allowed}, got {value}")
    levels = len(cfg.model.kwargs.get("channel_mult", _unet_defaults()["channel_mult"]))
    if cfg.size < 8 or cfg.size % (2 ** (levels - 1)):
        raise ValueError(f"train-prior images: size must be >= 8 and divisible by 2^(levels - 1) = "
                         f"{2 ** (levels - 1)}, got {cfg.size}")
    if cfg.prediction not in PREDICTIONS:
        raise ValueError(f"train-prior images: prediction must be one of {PREDICTIONS}, got {cfg.prediction!r}")
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"train-prior images: sampler must be one of {SAMPLERS}, got {cfg.sampler!r}")
    for name in ("caption_dropout", "view_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ValueError(f"train-prior images: {name} must be in [0, 1), got {getattr(cfg, name)}")
    if not 0.0 <= cfg.classifier_blur <= 1.0:
        raise ValueError(f"train-prior images: classifier_blur must be in [0, 1], got {cfg.classifier_blur}")
    for name in ("n_samples", "sample_batch", "sample_steps", "eval_per_prompt", "batch", "eval_prompts"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"train-prior images: {name} must be >= 1, got {getattr(cfg, name)}")


def settings_of(cfg: ImagePriorConfig) -> dict:
    """The settings a weights file carries (``_WEIGHTS_KEYS``)."""
    return {k: v for k, v in asdict(cfg).items() if k in _WEIGHTS_KEYS}


def tokenizer() -> Tokenizer:
    return Tokenizer(swi.vocabulary())


def captions_of(labels: torch.Tensor, with_view: torch.Tensor | None = None) -> list[str]:
    """Captions of [N, 3] (shape, colour, view) labels; ``with_view`` [N] bool drops the view part where False."""
    out = []
    for i, (s, c, v) in enumerate(labels.tolist()):
        view = swi.VIEWS[v] if with_view is None or bool(with_view[i]) else None
        out.append(swi.caption(swi.SHAPES[s], swi.COLORS[c], view))
    return out


def dataset(cfg: ImagePriorConfig, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n = n if n is not None else (cfg.train_size if split == "train" else cfg.heldout_size)
    return swi.dataset(split, n, cfg.size, cfg.shapes, cfg.colors, cfg.data_seed)


def eval_pairs(cfg: ImagePriorConfig, n: int) -> list[tuple[str, str]]:
    """Prompt ``k``: ``(shapes[k % ns], colors[k % nc])`` (all 35 pairs in the first 35 with the full lists)."""
    return [(cfg.shapes[k % len(cfg.shapes)], cfg.colors[k % len(cfg.colors)]) for k in range(n)]


def default_prompts(cfg: ImagePriorConfig) -> list[str]:
    if cfg.prompts:
        return [str(p) for p in cfg.prompts]
    return [swi.caption(s, c) for s, c in eval_pairs(cfg, len(cfg.shapes))]


# -- training ----------------------------------------------------------------------------------

def make_trainer(cfg: ImagePriorConfig, run_dir: str, info: _trainer.DistInfo | None = None) -> _trainer.Trainer:
    _check(cfg)
    info = info or _trainer.DistInfo(device=torch.device(cfg.device))
    torch.manual_seed(cfg.seed)
    model = build_network(settings_of(cfg))
    schedule = make_schedule(settings_of(cfg))
    images, labels = dataset(cfg, "train")
    images = images.to(info.device)
    tok = tokenizer()
    full = tok(captions_of(labels)).to(info.device)
    bare = tok(captions_of(labels, torch.zeros(len(labels), dtype=torch.bool))).to(info.device)
    width = max(full.shape[1], bare.shape[1])
    full = torch.nn.functional.pad(full, (0, width - full.shape[1]))
    bare = torch.nn.functional.pad(bare, (0, width - bare.shape[1]))

    def batch_fn(step, g):
        idx = torch.randint(0, len(images), (cfg.batch,), generator=g, device=g.device).to(info.device)
        no_view = (torch.rand(cfg.batch, generator=g, device=g.device) < cfg.view_dropout).to(info.device)
        ids = torch.where(no_view[:, None], bare[idx], full[idx])
        return swi.from_uint8(images[idx]), drop_captions(ids, cfg.caption_dropout, g)

    def loss_fn(net, batch, g):
        x, y = batch
        return training_loss(net, schedule, x, y, generator=g, prediction=cfg.prediction)

    opts = _trainer.TrainOptions.from_config(cfg)
    return _trainer.Trainer(model, loss_fn, batch_fn, opts, JOB, cfg, os.path.join(run_dir, _runs.CHECKPOINT), info,
                            RESUME_FREE)


def find_run(cfg: ImagePriorConfig) -> tuple[str | None, str]:
    out = cfg.out or default_out(cfg)
    path, reasons = _runs.find_run(JOB, out, cfg, RESUME_FREE)
    return path, (f"no trained run for this config at {out}" + (f" ({'; '.join(reasons)})" if reasons else ""))


def train(cfg: ImagePriorConfig) -> dict:
    """Train (resuming a matching run), then write a sample grid. Works under ``torchrun``."""
    _check(cfg)
    info = _trainer.init_distributed(cfg.device)
    try:
        if info.is_main:
            run_dir, ckpt = _runs.choose_run_dir(JOB, cfg.out or default_out(cfg), cfg, cfg.resume, RESUME_FREE)
        run_dir, ckpt = _trainer.broadcast_object((run_dir, ckpt) if info.is_main else None, info)
        t0 = time.perf_counter()
        trainer = make_trainer(cfg, run_dir, info)
        if info.is_main:
            print(f"train-prior images: {cfg.train_size} training views of {cfg.size} x {cfg.size} made in "
                  f"{time.perf_counter() - t0:.0f} s; {sum(p.numel() for p in trainer.model.parameters())} parameters")
        if ckpt is not None and trainer.load() and info.is_main:
            print(f"train-prior images: resumed from {trainer.ckpt_path} at step {trainer.step}")
        res = trainer.fit(desc="image prior")
        result = {**res, "out": run_dir}
        if info.is_main:
            print(f"train-prior images: {res['steps']} steps ({res['seconds']:.0f} s this run), loss "
                  f"{res['loss']:.4f}; wrote {run_dir}/")
            if cfg.n_samples:
                prior = ShapeWorldPrior(trainer.sampling_model(), settings_of(cfg))
                result["files"] = write_grid(prior, replace(cfg, device=str(info.device)), run_dir,
                                             default_prompts(cfg))
        return result
    finally:
        _trainer.shutdown_distributed()


def load_run_prior(cfg: ImagePriorConfig, run_dir: str) -> ShapeWorldPrior:
    net = build_network(settings_of(cfg))
    state = _trainer.load_weights(os.path.join(run_dir, _runs.CHECKPOINT), net)
    prior = ShapeWorldPrior(net, settings_of(cfg)).to(cfg.device)
    prior.step = state["step"]
    return prior


def export_weights(cfg: ImagePriorConfig) -> dict:
    """The trained run's EMA weights -> ``cfg.weights`` (safetensors, floats as float16, with the
    settings, the vocabulary and the step in its metadata)."""
    if not cfg.weights or cfg.weights == "bundled":
        raise ValueError(f"train-prior images export: give the file to write as weights=PATH (the bundled prior "
                         f"lives at {BUNDLED})")
    run_dir, why = find_run(cfg)
    if run_dir is None:
        raise ValueError(f"train-prior images export: {why}; train it first with the same settings")
    prior = load_run_prior(cfg, run_dir)
    n = save_prior_file(prior, cfg.weights)
    print(f"train-prior images export: {n} parameters from step {prior.step} -> {cfg.weights}")
    return {"out": cfg.weights, "step": prior.step}


def save_prior_file(prior: ShapeWorldPrior, path: str) -> int:
    """Write ``prior``'s network (floats as float16), settings, vocabulary and step to ``path``
    (what :meth:`ShapeWorldPrior.from_file` reads); returns the parameter count."""
    from safetensors.torch import save_file

    tensors = {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in prior.net.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata={"settings": json.dumps(prior.settings), "vocab": json.dumps(tokenizer().vocab),
                                       "step": str(getattr(prior, "step", 0))})
    return sum(t.numel() for t in tensors.values())


def _source(cfg: ImagePriorConfig) -> tuple[ShapeWorldPrior, str]:
    """The prior to sample: ``weights`` when set, else the config's trained run, else the bundled file."""
    if not cfg.weights:
        run_dir, why = find_run(cfg)
        if run_dir is not None:
            return load_run_prior(cfg, run_dir), run_dir
        if not os.path.exists(BUNDLED):
            raise ValueError(f"{why}, and no bundled prior at {BUNDLED}: train one with `pyengine train-prior images`")
        print(f"train-prior images: using the bundled prior {BUNDLED} ({why})")
    path = BUNDLED if cfg.weights in ("", "bundled") else cfg.weights
    if not os.path.exists(path):
        raise ValueError(f"train-prior images: weights file {path} does not exist")
    out = cfg.out or os.path.join("runs", JOB, "weights-" + os.path.splitext(os.path.basename(path))[0])
    os.makedirs(out, exist_ok=True)
    return ShapeWorldPrior.from_file(path, device=cfg.device), out


# -- sampling ------------------------------------------------------------------------------------

@torch.no_grad()
def generate(prior: ShapeWorldPrior, prompts: list[str], sampler: str = "dpm", steps: int = 25, guidance: float = 3.0,
             negative_prompt: str = "", clip_x0: float = 1.0, seed: int = 0, batch: int = 32) -> torch.Tensor:
    """One image per prompt: ``[len(prompts), S, S, 3]`` in [-1, 1]; image ``k`` starts from noise
    seeded by ``seed + k``."""
    for p in [*prompts, negative_prompt]:
        prior.check_prompt(p)
    net, S = prior.net, prior.resolution
    dev = next(net.parameters()).device
    tok = prior.tokenizer
    uncond = net.encode(tok([negative_prompt], dev))
    outs = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        x_T = torch.stack([torch.randn(S, S, 3, generator=torch.Generator().manual_seed(seed + start + k))
                           for k in range(len(chunk))]).to(dev)
        guided = ClassifierFreeGuidance(net.denoise, net.encode(tok(chunk, dev)), uncond, guidance)
        kw = dict(generator=torch.Generator(device=dev).manual_seed(seed + start), device=dev, x_T=x_T,
                  prediction=prior.prediction, clip_x0=clip_x0 or None)
        steps_ = min(steps, prior.schedule.T)
        if sampler == "dpm":
            outs.append(dpm_solver_sample(guided, prior.schedule, x_T.shape, steps=steps_, **kw))
        else:
            outs.append(ddim_sample(guided, prior.schedule, x_T.shape, steps=steps_, **kw))
    return torch.cat(outs).clamp(-1, 1).cpu() if outs else torch.zeros(0, S, S, 3)


def write_grid(prior: ShapeWorldPrior, cfg: ImagePriorConfig, out_dir: str, prompts: list[str]) -> list[str]:
    import imageio.v3 as iio

    expanded = [p for p in prompts for _ in range(cfg.n_samples)]
    t0 = time.perf_counter()
    imgs = generate(prior, expanded, cfg.sampler, cfg.sample_steps, cfg.guidance, cfg.negative_prompt, cfg.clip_x0,
                    cfg.seed, cfg.sample_batch)
    grid = image_grid(swi.to_uint8(imgs).numpy(), cfg.n_samples)
    path = os.path.join(out_dir, "samples.png")
    os.makedirs(out_dir, exist_ok=True)
    iio.imwrite(path, grid.repeat(3, 0).repeat(3, 1))
    print(f"train-prior images: {len(expanded)} image(s) in {time.perf_counter() - t0:.1f} s "
          f"(rows: {'; '.join(prompts)}) -> {path}")
    return [path]


def sample(cfg: ImagePriorConfig) -> dict:
    _check(cfg)
    prior, out_dir = _source(cfg)
    return {"files": write_grid(prior, cfg, out_dir, default_prompts(cfg)), "out": out_dir}


# -- the evaluation classifier ---------------------------------------------------------------------

class ImageClassifier(torch.nn.Module):
    """A small CNN that names the shape and colour of a ShapeWorld view (the R-precision judge).

    ``forward(x [B, H, W, 3] in [-1, 1]) -> (shape logits [B, 5], colour logits [B, 7])``. Four 3x3
    convolutions of widths w, 2w, 4w, 4w (the first three strided), GroupNorm and SiLU, a global
    average, and two linear heads.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w, layers, c_in = width, [], 3
        for c_out, stride in ((w, 2), (2 * w, 2), (4 * w, 2), (4 * w, 1)):
            layers += [torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), torch.nn.GroupNorm(4, c_out),
                       torch.nn.SiLU()]
            c_in = c_out
        self.features = torch.nn.Sequential(*layers)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(c_in, len(swi.SHAPES)),
                                          torch.nn.Linear(c_in, len(swi.COLORS))])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"ImageClassifier: x must be [B, H, W, 3], got {tuple(x.shape)}")
        h = self.features(x.permute(0, 3, 1, 2)).mean((2, 3))
        return tuple(head(h) for head in self.heads)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
        """[B, 2] predicted (shape, colour) indices; ``x`` float [B, H, W, 3] in [-1, 1] or uint8."""
        self.eval()
        dev = next(self.parameters()).device
        out = []
        for s in range(0, len(x), batch):
            xb = x[s:s + batch].to(dev)
            xb = swi.from_uint8(xb) if xb.dtype == torch.uint8 else xb.float()
            out.append(torch.stack([logits.argmax(-1) for logits in self(xb)], -1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 2, dtype=torch.long)


def _classifier_settings(cfg: ImagePriorConfig) -> dict:
    keys = ("size", "shapes", "colors", "train_size", "data_seed", "classifier_batch", "classifier_lr",
            "classifier_width", "classifier_noise", "classifier_blur", "classifier_steps", "seed")
    return {k: v for k, v in asdict(cfg).items() if k in keys}


def classifier_path(cfg: ImagePriorConfig) -> str:
    """``cfg.classifier`` (``"bundled"``: ``pyengine/assets/image_classifier.safetensors``), else
    ``runs/image-prior/classifier-<hash of its data and settings>/classifier.safetensors``."""
    if cfg.classifier:
        return CLASSIFIER if cfg.classifier == "bundled" else cfg.classifier
    blob = json.dumps(_classifier_settings(cfg), sort_keys=True)
    return os.path.join("runs", JOB, f"classifier-{hashlib.sha256(blob.encode()).hexdigest()[:8]}",
                        "classifier.safetensors")


def _blur(x: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] -> a 3x3 binomial blur of each image (edge-replicated)."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    k = (k[:, None] * k[None, :]) / 16
    xc = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.conv2d(xc, k.expand(3, 1, 3, 3), groups=3).permute(0, 2, 3, 1)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    """Shape, colour and joint accuracy of [N, 2] predictions against [N, >= 2] labels."""
    hit = pred[:, :2] == labels[:, :2]
    n = len(labels)
    mean = lambda h: float(h.float().mean()) if n else float("nan")
    return {"shape": mean(hit[:, 0]), "color": mean(hit[:, 1]), "joint": mean(hit.all(1)), "n": n}


def train_classifier(cfg: ImagePriorConfig) -> dict:
    """Train the evaluation classifier on real training views (mirrored, some blurred, a little
    noise), write it to :func:`classifier_path` with its held-out accuracy; returns them."""
    from safetensors.torch import save_file

    _check(cfg)
    path = classifier_path(cfg)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = ImageClassifier(cfg.classifier_width)
    images, labels = dataset(cfg, "train")
    images, labels = images.to(dev), labels.to(dev)

    def batch_fn(step, g):
        idx = torch.randint(0, len(images), (cfg.classifier_batch,), generator=g, device=g.device).to(dev)
        x = swi.from_uint8(images[idx])
        r = torch.rand(3, len(idx), generator=g, device=g.device).to(dev)
        x = torch.where((r[0] < 0.5)[:, None, None, None], x.flip(2), x)
        x = torch.where((r[1] < cfg.classifier_blur)[:, None, None, None], _blur(x), x)
        std = cfg.classifier_noise * r[2][:, None, None, None]
        return x + std * torch.randn(x.shape, generator=g, device=g.device).to(dev), labels[idx]

    def loss_fn(net, batch, g):
        x, y = batch
        return sum(torch.nn.functional.cross_entropy(logits, y[:, k]) for k, logits in enumerate(net(x)))

    settings = _classifier_settings(cfg)
    opts = _trainer.TrainOptions(steps=cfg.classifier_steps, lr=cfg.classifier_lr, warmup_steps=20, ema_decay=0.0,
                                 checkpoint_every=250, seed=cfg.seed)
    ckpt = os.path.splitext(path)[0] + ".checkpoint.safetensors"
    tr = _trainer.Trainer(model, loss_fn, batch_fn, opts, "image-classifier", settings, ckpt,
                          _trainer.DistInfo(device=dev))
    if tr.load():
        print(f"train-prior images train-classifier: resumed from {tr.ckpt_path} at step {tr.step}")
    res = tr.fit(desc="image classifier")
    held, held_labels = dataset(cfg, "heldout")
    acc = accuracy(tr.model.predict(held), held_labels)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tr.model.state_dict().items()}
    save_file(tensors, path, metadata={"settings": json.dumps(settings), "heldout": json.dumps(acc),
                                       "step": str(tr.step)})
    print(f"train-prior images train-classifier: {tr.step} steps ({res['seconds']:.0f} s this run), loss "
          f"{res['loss']:.4f}; held-out accuracy on {acc['n']} real views: shape {acc['shape']:.3f}, colour "
          f"{acc['color']:.3f}, joint {acc['joint']:.3f}; wrote {path}")
    return {"path": path, "heldout": acc, "steps": tr.step}


def load_classifier(cfg: ImagePriorConfig | None = None, path: str | None = None,
                    train_if_missing: bool = True) -> tuple[ImageClassifier, dict]:
    """``(classifier in eval mode, {settings, heldout accuracy, path})``: ``path``, else the
    bundled judge (``pyengine/assets/image_classifier.safetensors``) when ``cfg`` is None or asks
    for it, else ``cfg``'s, trained first when missing."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path is None:
        path = CLASSIFIER if cfg is None else classifier_path(cfg)
    if not os.path.exists(path):
        if cfg is None or cfg.classifier or not train_if_missing:
            raise ValueError(f"image classifier {path} does not exist; make it with `pyengine train-prior images "
                             f"train-classifier`")
        print(f"train-prior images: no evaluation classifier at {path} yet; training it on real views first")
        train_classifier(cfg)
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if "settings" not in meta:
        raise ValueError(f"{path} is not a classifier written by `pyengine train-prior images train-classifier`")
    settings = json.loads(meta["settings"])
    model = ImageClassifier(settings["classifier_width"])
    model.load_state_dict(load_file(path))
    return model.eval(), {"settings": settings, "heldout": json.loads(meta["heldout"]), "path": path}


def evaluate(cfg: ImagePriorConfig) -> dict:
    """Generate ``eval_per_prompt`` images for each of ``eval_prompts`` prompts (without a view
    suffix) and score them with the classifier; prints a table and writes ``eval.json``."""
    _check(cfg)
    prior, out_dir = _source(cfg)
    clf, meta = load_classifier(cfg)
    if meta["settings"]["size"] != prior.resolution:
        raise ValueError(f"the classifier {meta['path']} judges {meta['settings']['size']}-pixel views, the prior "
                         f"makes {prior.resolution}")
    clf = clf.to(cfg.device)
    pairs = eval_pairs(cfg, cfg.eval_prompts)
    prompts = [swi.caption(s, c) for s, c in pairs for _ in range(cfg.eval_per_prompt)]
    labels = torch.tensor([[swi.SHAPES.index(s), swi.COLORS.index(c)] for s, c in pairs
                           for _ in range(cfg.eval_per_prompt)])
    t0 = time.perf_counter()
    imgs = generate(prior, prompts, cfg.sampler, cfg.sample_steps, cfg.guidance, cfg.negative_prompt, cfg.clip_x0,
                    cfg.seed + 10_000, cfg.sample_batch)
    seconds = time.perf_counter() - t0
    gen = accuracy(clf.predict(imgs), labels)
    real = meta["heldout"]
    rows = [{"images": "generated", **gen}, {"images": "real (held-out)", **real}]
    table = format_table(rows, [("images", "images", "s"), ("n", "n", "d"), ("shape", "shape", ".3f"),
                                ("color", "colour", ".3f"), ("joint", "joint", ".3f")])
    print(f"train-prior images eval: {out_dir} at step {getattr(prior, 'step', 0)}: {len(pairs)} prompts x "
          f"{cfg.eval_per_prompt} images ({cfg.sampler} {cfg.sample_steps} steps, guidance {cfg.guidance}; "
          f"{seconds:.0f} s), judged by {meta['path']}\n{table}")
    import imageio.v3 as iio

    os.makedirs(out_dir, exist_ok=True)
    iio.imwrite(os.path.join(out_dir, "eval_grid.png"),
                image_grid(swi.to_uint8(imgs).numpy(), cfg.eval_per_prompt).repeat(2, 0).repeat(2, 1))
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump({"step": getattr(prior, "step", 0), "generated": gen, "real_heldout": real,
                   "classifier": meta["path"], "seconds": seconds, "config": asdict(cfg)}, f, indent=1)
    return {"generated": gen, "real": real, "table": table, "out": out_dir}


COMMANDS = {"train": train, "sample": sample, "eval": evaluate, "export": export_weights,
            "train-classifier": train_classifier}


def run(cfg: ImagePriorConfig, command: str = "train") -> dict:
    if command not in COMMANDS:
        raise ValueError(f"train-prior images: unknown command {command!r} ({', '.join(COMMANDS)})")
    return COMMANDS[command](cfg)
