"""``pyengine points train|sample|complete|eval``: Point-Voxel Diffusion (PVD) on ShapeWorld clouds.

Data: surface point clouds of ShapeWorld shapes (``n_points`` = 2048 per cloud; sphere, cube,
cylinder, cone, torus with random proportions, yaw and tilt, scaled into the unit sphere), made on
the fly from fixed seeds: cloud ``i`` of the training split comes from seed ``data_seed + i``, of
the held-out split from ``data_seed + 1_000_000 + i``, and its class (the shape) is
``classes[i % len(classes)]``. Training batches are turned by a random yaw, under which the data
are invariant.

Model: a DDPM (PVD's linear schedule, 1e-4 .. 0.02 over 1000 steps, epsilon-prediction MSE as PVD,
or ``prediction=v``, which small models trained briefly need: see ``configs/points_pvd_cpu.yaml``) over
``[B, 3, N]`` clouds, optionally class-conditional. ``model.arch`` names the network:
``pointnet`` (built in: shared per-point MLP, global max-pool, timestep and class embeddings) or
``pvd`` (``pyengine.nn.pvcnn.PVCNN2``, PVD's point-voxel U-Net, built with ``model.kwargs``; see
``configs/points_pvd.yaml``). ``task=complete`` trains PVD's completion model instead: the first
``n_partial`` points are observed points (one side of a random plane) given clean, and only the
others are denoised.

Jobs (one config for all; they find the run directory from it as ``fit-nerf`` does):
  train     train (resumes a matching run), then write samples as ``sample`` does
  sample    ``n_samples`` clouds (per class when conditional): PLY files and a turntable GIF
  complete  complete held-out partial clouds: PLY files and a GIF (partial | completed | truth)
  eval      PVD's protocol: 1-NNA under CD and EMD against held-out clouds, and completion CD
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import numpy as np
import torch

from pyengine.data import shapeworld
from pyengine.data.ply import write_ply
from pyengine.diffusion import PREDICTIONS, NoiseSchedule, complete, ddim_sample, ddpm_sample, training_loss
from pyengine.engines import _runs, _trainer
from pyengine.engines import point_metrics as pm

HELDOUT_OFFSET = 1_000_000
#: The bundled prior (``weights=bundled``): configs/points_pvd_cpu.yaml's model, exported.
BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                       "points_prior.safetensors")


@dataclass
class ModelConfig:
    arch: str = "pointnet"  # "pointnet" (built in) or "pvd" (pyengine.nn.pvcnn.PVCNN2)
    hidden: int = 64  # pointnet: width of the per-point MLP
    emb_dim: int = 64  # pointnet: sinusoidal timestep embedding size
    kwargs: dict = field(default_factory=dict)  # constructor kwargs of other archs (PVD's)


@dataclass
class PointsConfig:
    # data
    classes: list = field(default_factory=lambda: list(shapeworld.SHAPES))
    conditional: bool = True  # class-conditional (one model, y = class); else unconditional
    n_points: int = 2048
    train_size: int = 200  # distinct training clouds (each batch also gets a random yaw)
    heldout_size: int = 100  # held-out clouds (balanced over the classes)
    size_jitter: float = 0.3  # each dimension times U[1 - j, 1 + j]
    max_tilt_deg: float = 30.0
    data_seed: int = 0
    task: str = "generate"  # "generate", or "complete" (PVD's completion model)
    n_partial: int = 512  # observed points of a partial cloud
    # diffusion
    schedule: str = "linear"
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "eps"  # the model's output: "eps" (PVD), "v" or "x0" (see diffusion.training_loss)
    model: ModelConfig = field(default_factory=ModelConfig)
    # optimisation
    steps: int = 1000
    batch: int = 8  # clouds per step (per process under torchrun)
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 50
    lr_decay: str = "none"  # "cosine": decay to lr * lr_final over the steps after the warm-up
    lr_final: float = 0.1
    ema_decay: float = 0.995
    checkpoint_every: int = 500
    log_every: int = 10
    # sampling and evaluation
    sampler: str = "ddim"  # "ddpm" (all timesteps) or "ddim"
    sample_steps: int = 100
    eta: float = 0.0
    clip_x0: float = 0.0  # > 0: clamp each step's predicted x0 to [-clip_x0, clip_x0] (clouds fit in radius 1)
    n_samples: int = 4  # per class when conditional
    eval_samples: int = 16  # generated and held-out clouds compared per class (or in all)
    emd_points: int = 256  # points per cloud for the exact EMD (0: skip EMD)
    eval_complete: bool = True  # eval also completes the held-out partial clouds (completion CD); false halves it
    turntable_frames: int = 24
    gif_size: int = 128
    seed: int = 0
    device: str = "cpu"
    resume: bool = True
    out: str = ""  # empty: runs/points/<arch>-<cond|uncond>-<task>-<hash of the defining fields>
    # sample / complete / eval from a weights file (written by export, with the settings it was
    # trained with) instead of a trained run ("bundled": the packaged prior); export writes one
    weights: str = ""


#: Fields that do not change the trained model: left out of the run's hash and its resume check.
RESUME_FREE = frozenset({"steps", "checkpoint_every", "log_every", "heldout_size", "sampler", "sample_steps", "eta",
                         "clip_x0", "n_samples", "eval_samples", "emd_points", "eval_complete", "turntable_frames",
                         "gif_size", "device", "resume", "out", "weights"})
JOB = "points"


def default_out(cfg: PointsConfig) -> str:
    label = f"{cfg.model.arch}-{'cond' if cfg.conditional else 'uncond'}-{cfg.task}"
    return os.path.join("runs", JOB, f"{label}-{_runs.config_hash(cfg, RESUME_FREE)}")


def _check(cfg: PointsConfig) -> None:
    bad = [c for c in cfg.classes if c not in shapeworld.SHAPES]
    if bad or not cfg.classes:
        raise ValueError(f"points: classes must be a non-empty list of {shapeworld.SHAPES}, got {cfg.classes}")
    if cfg.task not in ("generate", "complete"):
        raise ValueError(f"points: task must be 'generate' or 'complete', got {cfg.task!r}")
    if not 0 < cfg.n_partial < cfg.n_points:
        raise ValueError(f"points: n_partial must be in (0, n_points), got {cfg.n_partial}")
    if cfg.prediction not in PREDICTIONS:
        raise ValueError(f"points: prediction must be one of {PREDICTIONS}, got {cfg.prediction!r}")
    if cfg.clip_x0 < 0:
        raise ValueError(f"points: clip_x0 must be >= 0 (0: no clamp), got {cfg.clip_x0}")
    if cfg.sampler not in ("ddpm", "ddim"):
        raise ValueError(f"points: sampler must be 'ddpm' or 'ddim', got {cfg.sampler!r}")


# -- data ----------------------------------------------------------------------------------------

def shape_cloud(shape: str, seed: int, n_points: int = 2048, size_jitter: float = 0.3,
                max_tilt_deg: float = 30.0) -> torch.Tensor:
    """[n_points, 3] surface points of one random ``shape`` (proportions, yaw, tilt from ``seed``),
    scaled so that it fits in the unit sphere."""
    g = torch.Generator().manual_seed(seed)
    u = lambda: float(torch.rand((), generator=g, dtype=torch.float64))
    dims = {}
    for name, value in shapeworld.SHAPE_DIMS[shape].items():
        jit = lambda v: v * (1 + size_jitter * (2 * u() - 1))
        dims[name] = tuple(jit(v) for v in value) if isinstance(value, tuple) else jit(value)
    obj = shapeworld.SceneObject(shape, yaw_deg=360.0 * u(), tilt_deg=max_tilt_deg * (2 * u() - 1), dims=dims)
    obj.scale = 1.0 / obj.bounding_radius()
    return shapeworld.sample_surface_points(shapeworld.Scene([obj]), n_points, generator=g)


@lru_cache(maxsize=8)
def _split(classes: tuple, split: str, n: int, n_points: int, size_jitter: float, max_tilt_deg: float,
           data_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    base = data_seed + (HELDOUT_OFFSET if split == "heldout" else 0)
    labels = torch.arange(n) % len(classes)
    clouds = torch.stack([shape_cloud(classes[int(c)], base + i, n_points, size_jitter, max_tilt_deg)
                          for i, c in enumerate(labels)])
    return clouds.transpose(1, 2).contiguous(), labels


def dataset(cfg: PointsConfig, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clouds [n, 3, n_points], labels [n])`` of the ``"train"`` or ``"heldout"`` split.

    Labels index ``cfg.classes``; cloud ``i`` has label ``i % len(classes)``.
    """
    n = n if n is not None else (cfg.train_size if split == "train" else cfg.heldout_size)
    return _split(tuple(cfg.classes), split, n, cfg.n_points, cfg.size_jitter, cfg.max_tilt_deg, cfg.data_seed)


def random_yaw(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Clouds [B, 3, N] each turned about +z by a random angle."""
    a = 2 * math.pi * torch.rand(x.shape[0], generator=g, device=g.device).to(x.device, x.dtype)
    c, s, z, o = a.cos(), a.sin(), torch.zeros_like(a), torch.ones_like(a)
    rot = torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)
    return rot @ x


def partial_cloud(x: torch.Tensor, n_partial: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut clouds [B, 3, N] by a random plane through each centroid.

    Returns ``(partial [B, 3, n_partial], rest [B, 3, N - n_partial])``: ``n_partial`` points drawn
    from one side of the plane (with repetition if that side has fewer) and the remaining points
    drawn from the whole cloud, so ``cat(partial, rest)`` is a completion target.
    """
    B, _, N = x.shape
    normal = torch.randn(B, 3, generator=g, device=g.device).to(x.device, x.dtype)
    side = torch.einsum("bc,bcn->bn", normal, x - x.mean(-1, keepdim=True)) > 0
    keys = torch.rand(B, N, generator=g, device=g.device).to(x.device)
    order = torch.argsort(keys + 2.0 * (~side), dim=1)  # visible points first, shuffled
    n_vis = side.sum(1, keepdim=True).clamp_min(1)
    pick = order.gather(1, torch.arange(n_partial, device=x.device)[None] % n_vis)
    rest = torch.argsort(torch.rand(B, N, generator=g, device=g.device).to(x.device), dim=1)[:, : N - n_partial]
    take = lambda idx: x.gather(2, idx[:, None].expand(-1, 3, -1))
    return take(pick), take(rest)


# -- models ----------------------------------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B, dim] sinusoidal embedding of integer steps (DDPM's / PVD's)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    ang = t.float()[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], -1)


class PointNetEps(torch.nn.Module):
    """A small PointNet epsilon predictor: ``forward(x [B, 3, N], t [B], y [B] or None) -> [B, 3, N]``.

    Per-point MLP features plus the timestep (and class) embedding, a global max-pooled feature,
    then a per-point head on ``[local, global]``. The last layer starts at zero.
    """

    def __init__(self, hidden: int = 64, emb_dim: int = 64, num_classes: int = 0):
        super().__init__()
        H = hidden
        self.emb_dim = emb_dim
        self.t_mlp = torch.nn.Sequential(torch.nn.Linear(emb_dim, H), torch.nn.SiLU(), torch.nn.Linear(H, H))
        self.y_emb = torch.nn.Embedding(num_classes, H) if num_classes else None
        lin = torch.nn.Linear  # per-point layers as matmuls over [B, N, C] (faster than 1x1 Conv1d on CPUs)
        self.local = torch.nn.Sequential(lin(3, H), torch.nn.SiLU(), lin(H, H))
        self.glob = torch.nn.Sequential(torch.nn.SiLU(), lin(H, 2 * H), torch.nn.SiLU(), lin(2 * H, 4 * H))
        self.head = torch.nn.Sequential(lin(5 * H, 2 * H), torch.nn.SiLU(), lin(2 * H, H), torch.nn.SiLU(), lin(H, 3))
        torch.nn.init.zeros_(self.head[-1].weight)
        torch.nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.t_mlp(timestep_embedding(t, self.emb_dim))
        if self.y_emb is not None:
            if y is None:
                raise ValueError("PointNetEps: this model is class-conditional; pass y")
            cond = cond + self.y_emb(y)
        h = self.local(x.transpose(1, 2)) + cond[:, None, :]  # [B, N, H]
        g = self.glob(h).amax(1, keepdim=True)
        return self.head(torch.cat([h, g.expand(-1, h.shape[1], -1)], -1)).transpose(1, 2)


def resolve_arch(name: str):
    """The model class of ``model.arch``; ``pvd`` is imported from ``pyengine.nn`` on first use."""
    if name == "pointnet":
        return PointNetEps
    if name == "pvd":
        try:
            return importlib.import_module("pyengine.nn.pvcnn").PVCNN2
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"points: model.arch=pvd needs pyengine.nn.pvcnn.PVCNN2, which is not available "
                             f"({exc})") from None
    raise ValueError(f"points: unknown model.arch {name!r} (pointnet, pvd)")


def build_model(cfg: PointsConfig) -> torch.nn.Module:
    cls = resolve_arch(cfg.model.arch)
    n_cls = len(cfg.classes) if cfg.conditional else 0
    if cfg.model.arch == "pointnet":
        return cls(hidden=cfg.model.hidden, emb_dim=cfg.model.emb_dim, num_classes=n_cls, **cfg.model.kwargs)
    model = cls(**cfg.model.kwargs)
    if cfg.conditional and len(inspect.signature(model.forward).parameters) < 3:
        raise ValueError(f"points: conditional=true but {cls.__name__}.forward takes no class labels; set "
                         "conditional=false or give the model's class-embedding kwargs in model.kwargs")
    return model


def make_schedule(cfg: PointsConfig) -> NoiseSchedule:
    if cfg.schedule == "linear":
        return NoiseSchedule.linear(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    return NoiseSchedule.from_name(cfg.schedule, cfg.timesteps)


# -- training ----------------------------------------------------------------------------------------

def make_trainer(cfg: PointsConfig, run_dir: str, info: _trainer.DistInfo | None = None) -> _trainer.Trainer:
    """A :class:`~pyengine.engines._trainer.Trainer` of ``cfg``'s model on its training split."""
    _check(cfg)
    info = info or _trainer.DistInfo(device=torch.device(cfg.device))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    schedule = make_schedule(cfg)
    clouds, labels = dataset(cfg, "train")
    clouds, labels = clouds.to(info.device), labels.to(info.device)
    mask = None
    if cfg.task == "complete":
        mask = torch.zeros(1, 1, cfg.n_points, dtype=torch.bool, device=info.device)
        mask[..., :cfg.n_partial] = True

    def batch_fn(step, g):
        idx = torch.randint(0, len(clouds), (cfg.batch,), generator=g, device=g.device).to(info.device)
        x = random_yaw(clouds[idx], g)
        if cfg.task == "complete":
            x = torch.cat(partial_cloud(x, cfg.n_partial, g), -1)
        return x, labels[idx]

    def loss_fn(net, batch, g):
        x, y = batch
        return training_loss(net, schedule, x, y if cfg.conditional else None, generator=g, known_mask=mask,
                             prediction=cfg.prediction)

    opts = _trainer.TrainOptions.from_config(cfg)
    return _trainer.Trainer(model, loss_fn, batch_fn, opts, JOB, cfg, os.path.join(run_dir, _runs.CHECKPOINT), info,
                            RESUME_FREE)


def find_run(cfg: PointsConfig) -> str:
    """The directory of the trained run that matches ``cfg`` (``out``, ``out-2``, ...); ValueError if none."""
    out = cfg.out or default_out(cfg)
    path, reasons = _runs.find_run(JOB, out, cfg, RESUME_FREE)
    if path is None:
        raise ValueError(f"points: no trained run for this config at {out}" + (f" ({'; '.join(reasons)})" if reasons
                         else "") + "; run `pyengine points train` with the same settings first")
    return path


def load_model(cfg: PointsConfig, run_dir: str | None = None) -> tuple[torch.nn.Module, dict]:
    """``(model with the run's EMA weights, in eval mode, checkpoint state)``."""
    _check(cfg)
    run_dir = run_dir or find_run(cfg)
    model = build_model(cfg)
    state = _trainer.load_weights(os.path.join(run_dir, _runs.CHECKPOINT), model)
    return model.to(cfg.device).eval(), state


# -- weights files ------------------------------------------------------------------------------

#: Settings a weights file carries: everything that shapes the network and the data it models.
_WEIGHTS_KEYS = ("classes", "conditional", "n_points", "task", "n_partial", "schedule", "timesteps", "beta_start",
                 "beta_end", "prediction", "model", "size_jitter", "max_tilt_deg")


def export_weights(cfg: PointsConfig) -> dict:
    """Writes the trained run's EMA weights to ``cfg.weights`` (safetensors, floating tensors in
    float16 to halve the file; loading casts them back), with the settings in ``_WEIGHTS_KEYS``
    and the step in its metadata."""
    if not cfg.weights or cfg.weights == "bundled":
        raise ValueError(f"points export: give the file to write as weights=PATH (the bundled prior lives at "
                         f"{BUNDLED})")
    from safetensors.torch import save_file

    model, state = load_model(cfg)
    settings = {k: v for k, v in asdict(cfg).items() if k in _WEIGHTS_KEYS}
    tensors = {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(cfg.weights)), exist_ok=True)
    save_file(tensors, cfg.weights, metadata={"settings": json.dumps(settings), "step": str(state["step"])})
    n = sum(t.numel() for t in tensors.values())
    print(f"points export: {n} parameters from step {state['step']} -> {cfg.weights}")
    return {"out": cfg.weights, "step": state["step"]}


def weights_config(cfg: PointsConfig) -> PointsConfig:
    """``cfg`` with the settings stored in its weights file ``cfg.weights``."""
    from safetensors import safe_open

    path = _weights_path(cfg)
    if not os.path.exists(path):
        raise ValueError(f"points: weights file {path} does not exist")
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if "settings" not in meta:
        raise ValueError(f"points: {path} is not a weights file of `pyengine points export` (no settings)")
    settings = json.loads(meta["settings"])
    settings["model"] = ModelConfig(**settings["model"])
    return replace(cfg, **settings)


def load_weights_file(cfg: PointsConfig) -> tuple[torch.nn.Module, dict, str]:
    """``(model with the file's weights, in eval mode, {"step": ...}, output directory)``."""
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


def _weights_path(cfg: PointsConfig) -> str:
    return BUNDLED if cfg.weights == "bundled" else cfg.weights


def _source(cfg: PointsConfig) -> tuple[PointsConfig, torch.nn.Module, dict, str]:
    """The model to sample from: the weights file when ``cfg.weights`` is set; else the trained run
    of ``cfg``; else the bundled prior (said so); else the ValueError of ``find_run``."""
    if not cfg.weights:
        try:
            run_dir = find_run(cfg)
        except ValueError as exc:
            if not os.path.exists(BUNDLED):
                raise
            print(f"points: sampling the bundled prior {BUNDLED} ({exc})")
            cfg = replace(cfg, weights="bundled")
        else:
            model, state = load_model(cfg, run_dir)
            return cfg, model, state, run_dir
    cfg = weights_config(cfg)
    model, state, out = load_weights_file(cfg)
    return cfg, model, state, out


# -- sampling ------------------------------------------------------------------------------------

def _labels(cfg: PointsConfig, per_class: int, device) -> torch.Tensor | None:
    if not cfg.conditional:
        return None
    return torch.arange(len(cfg.classes), device=device).repeat_interleave(per_class)


def generate(model, cfg: PointsConfig, n: int, y=None, seed: int | None = None, progress: bool = False):
    """[n, 3, n_points] clouds from ``model`` with ``cfg``'s sampler (``y``: [n] labels or None)."""
    schedule = make_schedule(cfg)
    g = torch.Generator(device=cfg.device).manual_seed(cfg.seed if seed is None else seed)
    shape = (n, 3, cfg.n_points)
    kw = dict(y=y, generator=g, device=cfg.device, progress=progress, prediction=cfg.prediction,
              clip_x0=cfg.clip_x0 or None)
    if cfg.sampler == "ddpm":
        return ddpm_sample(model, schedule, shape, **kw)
    return ddim_sample(model, schedule, shape, steps=min(cfg.sample_steps, cfg.timesteps), eta=cfg.eta, **kw)


def complete_clouds(model, cfg: PointsConfig, full: torch.Tensor, y=None, seed: int | None = None,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut held-out clouds [B, 3, N] and complete them: ``(partial [B, 3, n_partial], completed [B, 3, N])``.

    A completion model (``task=complete``) sees the partial points clean (PVD); a generation
    model gets them noised to each step.
    """
    g = torch.Generator(device=cfg.device).manual_seed((cfg.seed if seed is None else seed) + 7)
    partial, _ = partial_cloud(full.to(cfg.device), cfg.n_partial, g)
    mode = "clean" if cfg.task == "complete" else "noised"
    done = complete(model, make_schedule(cfg), partial, cfg.n_points, y=y, sampler=cfg.sampler,
                    steps=min(cfg.sample_steps, cfg.timesteps), eta=cfg.eta, known_mode=mode, generator=g,
                    prediction=cfg.prediction, clip_x0=cfg.clip_x0 or None, progress=progress)
    return partial, done


def _palette(k: int):
    names = list(shapeworld.COLORS)
    return shapeworld.COLORS[names[k % len(names)]]


def _write_gif(path: str, clouds, cfg: PointsConfig, cols=None, colors=None) -> None:
    import imageio.v3 as iio

    from pyengine.render.points import turntable

    frames = turntable([c.T.cpu().numpy() for c in clouds], frames=cfg.turntable_frames, size=cfg.gif_size,
                       cols=cols, colors=colors)
    iio.imwrite(path, frames, duration=80, loop=0)


def write_samples(model, cfg: PointsConfig, run_dir: str, progress: bool = True) -> dict:
    """Sample ``n_samples`` clouds (per class), write ``samples/*.ply`` and ``samples/turntable.gif``."""
    y = _labels(cfg, cfg.n_samples, cfg.device)
    n = len(y) if y is not None else cfg.n_samples
    x = generate(model, cfg, n, y, progress=progress)
    out = os.path.join(run_dir, "samples")
    os.makedirs(out, exist_ok=True)
    names = []
    for i in range(n):
        label = cfg.classes[int(y[i])] if y is not None else "sample"
        names.append(os.path.join(out, f"{label}_{i:03d}.ply"))
        write_ply(names[-1], x[i].T)
    colors = [_palette(int(c)) for c in y] if y is not None else None
    if cfg.turntable_frames:
        _write_gif(os.path.join(out, "turntable.gif"), x, cfg, cols=cfg.n_samples if y is not None else None,
                   colors=colors)
    return {"samples": x, "ply": names, "dir": out}


# -- jobs ----------------------------------------------------------------------------------------------

def train(cfg: PointsConfig) -> dict:
    """Train (resuming a matching run), then write samples. Works under ``torchrun``."""
    _check(cfg)
    info = _trainer.init_distributed(cfg.device)
    try:
        if info.is_main:
            run_dir, ckpt = _runs.choose_run_dir(JOB, cfg.out or default_out(cfg), cfg, cfg.resume, RESUME_FREE)
        run_dir, ckpt = _trainer.broadcast_object((run_dir, ckpt) if info.is_main else None, info)
        trainer = make_trainer(cfg, run_dir, info)
        if ckpt is not None and trainer.load() and info.is_main:
            print(f"points: resumed from {trainer.ckpt_path} at step {trainer.step}")
        res = trainer.fit(desc=f"points {cfg.model.arch}")
        result = {**res, "out": run_dir, "params": sum(p.numel() for p in trainer.model.parameters())}
        if info.is_main:
            print(f"points: {res['steps']} steps ({res['seconds']:.0f} s this run), loss {res['loss']:.4f}; "
                  f"wrote {run_dir}/")
            if cfg.n_samples:
                samples = write_samples(trainer.sampling_model(), replace(cfg, device=str(info.device)), run_dir)
                result["ply"] = samples["ply"]
                print(f"points: wrote {len(samples['ply'])} samples and a turntable to {samples['dir']}/")
        return result
    finally:
        _trainer.shutdown_distributed()


def sample(cfg: PointsConfig) -> dict:
    cfg, model, state, run_dir = _source(cfg)
    res = write_samples(model, cfg, run_dir)
    print(f"points: {len(res['ply'])} samples from step {state['step']} ({cfg.sampler}, "
          f"{cfg.sample_steps if cfg.sampler == 'ddim' else cfg.timesteps} steps); wrote {res['dir']}/")
    return {"ply": res["ply"], "out": run_dir}


def complete_job(cfg: PointsConfig) -> dict:
    cfg, model, _, run_dir = _source(cfg)
    per = max(cfg.n_samples, 1)
    full, labels = _heldout_per_class(cfg, per)
    y = labels.to(cfg.device) if cfg.conditional else None
    partial, done = complete_clouds(model, cfg, full, y, progress=True)
    out = os.path.join(run_dir, "completion")
    os.makedirs(out, exist_ok=True)
    cd = pm.chamfer(done.transpose(1, 2).cpu(), full.transpose(1, 2)).tolist()
    for i in range(len(full)):
        name = cfg.classes[int(labels[i])]
        write_ply(os.path.join(out, f"{name}_{i:03d}_partial.ply"), partial[i].T)
        write_ply(os.path.join(out, f"{name}_{i:03d}_completed.ply"), done[i].T,
                  colors=np.where(np.arange(cfg.n_points)[:, None] < cfg.n_partial, [[220, 40, 30]], [[40, 90, 220]]))
        write_ply(os.path.join(out, f"{name}_{i:03d}_truth.ply"), full[i].T)
    if cfg.turntable_frames:
        rows = [c for i in range(len(full)) for c in (partial[i], done[i], full[i].to(cfg.device))]
        _write_gif(os.path.join(out, "turntable.gif"), rows, cfg, cols=3,
                   colors=[(0.86, 0.14, 0.12), (0.16, 0.34, 0.88), (0.5, 0.5, 0.5)] * len(full))
    print(f"points: completed {len(full)} held-out partial clouds ({cfg.n_partial} of {cfg.n_points} points), "
          f"mean Chamfer distance {np.mean(cd):.5f}; wrote {out}/ (partial | completed | truth)")
    return {"cd": cd, "out": out}


def _heldout_per_class(cfg: PointsConfig, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` held-out clouds of each class (from the balanced held-out split)."""
    k = len(cfg.classes)
    clouds, labels = dataset(cfg, "heldout", max(cfg.heldout_size, per_class * k))
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(k)])
    return clouds[idx], labels[idx]


def evaluate(cfg: PointsConfig) -> dict:
    """PVD's protocol on held-out clouds; prints and returns a table (also ``eval.json``)."""
    cfg, model, state, run_dir = _source(cfg)
    groups = [(cfg.classes[c], c) for c in range(len(cfg.classes))] if cfg.conditional else [("all", None)]
    n = cfg.eval_samples
    rows = []
    from tqdm import tqdm

    for name, c in tqdm(groups, desc="points eval", unit="class"):
        if c is None:
            ref = dataset(cfg, "heldout", max(cfg.heldout_size, n))[0][:n]  # balanced: class i % len(classes)
            y = None
        else:
            ref, labels = _heldout_per_class(cfg, n)
            ref, labels = ref[labels == c], labels[labels == c]
            y = torch.full((len(ref),), c, device=cfg.device)
        row = {"class": name, "n": len(ref)}
        if cfg.task == "generate":
            gen = generate(model, cfg, len(ref), y, seed=cfg.seed + 1000 + (c or 0)).cpu()
            row.update(pm.evaluate_generation(gen.transpose(1, 2), ref.transpose(1, 2), cfg.emd_points, cfg.seed))
        if cfg.eval_complete or cfg.task == "complete":
            _, done = complete_clouds(model, cfg, ref, y, seed=cfg.seed + 2000 + (c or 0))
            row["completion_cd"] = float(pm.chamfer(done.transpose(1, 2).cpu(), ref.transpose(1, 2)).mean())
        rows.append(row)
    if len(rows) > 1:
        keys = [k for k in ("1nna_cd", "1nna_emd", "mmd_cd", "completion_cd") if k in rows[0]]
        rows.append({"class": "mean", "n": sum(r["n"] for r in rows),
                     **{k: float(np.mean([r[k] for r in rows])) for k in keys}})
    for r in rows:
        for k in ("1nna_cd", "1nna_emd"):
            if k in r:
                r[k] *= 100.0
    table = pm.format_table(rows, [("class", "class", "s"), ("n", "n", "d"), ("1nna_cd", "1-NNA-CD %", ".1f"),
                                   ("1nna_emd", "1-NNA-EMD %", ".1f"), ("mmd_cd", "MMD-CD", ".5f"),
                                   ("completion_cd", "completion CD", ".5f")])
    sampler = f"{cfg.sampler} {cfg.sample_steps if cfg.sampler == 'ddim' else cfg.timesteps} steps"
    print(f"points eval: {run_dir} at step {state['step']} ({sampler}; EMD on {cfg.emd_points} points, exact "
          f"assignment; CD squared, PVD's)\n{table}")
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump({"step": state["step"], "config": asdict(cfg), "rows": rows}, f, indent=1)
    return {"rows": rows, "table": table, "out": run_dir}


COMMANDS = {"train": train, "sample": sample, "complete": complete_job, "eval": evaluate, "export": export_weights}


def run(cfg: PointsConfig, command: str = "train") -> dict:
    if command not in COMMANDS:
        raise ValueError(f"points: command must be one of {tuple(COMMANDS)}, got {command!r}")
    return COMMANDS[command](cfg)
